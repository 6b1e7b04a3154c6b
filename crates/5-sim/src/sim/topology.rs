//! Building the topology: hosts, elements, links and applications, and link state changes
//! (a child module of `sim`, so it fills the simulator's tables directly).

use super::*;

impl Sim {
    /// Adds a host with a smoltcp stack; its single port is 0.
    pub fn add_host(&mut self, cfg: HostConfig) -> Result<ElementId, SimError> {
        let id = ElementId(self.elements.len() as u32);
        let rng = stream(self.seed, StreamKind::Host, id.0 as u64);
        let name = cfg.name.clone();
        self.net.mtu_hint = self.net.mtu_hint.max(cfg.mtu);
        let host = Host::new(cfg, rng, self.net.now).map_err(SimError::Config)?;
        self.elements.push(ElementSlot {
            name,
            kind: NodeKind::Host(Box::new(host)),
            out: vec![None],
            armed: None,
        });
        Ok(id)
    }

    /// Adds an element.
    pub fn add_element<E: Element>(&mut self, name: impl Into<String>, element: E) -> ElementId {
        self.add_boxed_element(name, Box::new(element))
    }

    /// Adds an already boxed element.
    pub fn add_boxed_element(
        &mut self,
        name: impl Into<String>,
        element: Box<dyn Element>,
    ) -> ElementId {
        let id = ElementId(self.elements.len() as u32);
        self.elements.push(ElementSlot {
            name: name.into(),
            kind: NodeKind::Element(element),
            out: Vec::new(),
            armed: None,
        });
        let now = self.net.now;
        self.rearm_element(id, now);
        id
    }

    /// The name of a element.
    pub fn element_name(&self, element: ElementId) -> Option<&str> {
        self.elements
            .get(element.0 as usize)
            .map(|s| s.name.as_str())
    }

    fn check_port(&self, (element, port): (ElementId, Port)) -> Result<(), SimError> {
        let slot = self
            .elements
            .get(element.0 as usize)
            .ok_or(SimError::UnknownElement(element))?;
        if matches!(slot.kind, NodeKind::Host(_)) && port != 0 {
            return Err(SimError::BadHostPort(element, port));
        }
        Ok(())
    }

    /// Adds a unidirectional link from `from` (element, port) to `to` (element, port). A port has at
    /// most one outgoing link but may receive from any number of links.
    pub fn add_link(
        &mut self,
        from: (ElementId, Port),
        to: (ElementId, Port),
        cfg: LinkConfig,
    ) -> Result<LinkId, SimError> {
        self.check_port(from)?;
        self.check_port(to)?;
        cfg.validate().map_err(SimError::Config)?;
        let slot = &mut self.elements[from.0.0 as usize];
        let p = from.1 as usize;
        if slot.out.len() <= p {
            slot.out.resize(p + 1, None);
        }
        if slot.out[p].is_some() {
            return Err(SimError::PortInUse(from.0, from.1));
        }
        let id = LinkId(self.net.links.len() as u32);
        slot.out[p] = Some(id);
        let name = format!(
            "{}:{}->{}:{}",
            self.elements[from.0.0 as usize].name,
            from.1,
            self.elements[to.0.0 as usize].name,
            to.1
        );
        let rng = stream(self.seed, StreamKind::Link, id.0 as u64);
        self.net.links.push(Link::new(name, cfg, from, to, rng));
        Ok(id)
    }

    /// A full-duplex link: two unidirectional links `a -> b` and `b -> a` with the same
    /// configuration. Returns `(a->b, b->a)`.
    pub fn connect(
        &mut self,
        a: (ElementId, Port),
        b: (ElementId, Port),
        cfg: LinkConfig,
    ) -> Result<(LinkId, LinkId), SimError> {
        let ab = self.add_link(a, b, cfg.clone())?;
        let ba = self.add_link(b, a, cfg)?;
        Ok((ab, ba))
    }

    /// Starts an application on `host`. It is serviced from the current virtual time on.
    pub fn add_app(&mut self, host: ElementId, spec: AppSpec) -> Result<AppId, SimError> {
        let slot = self
            .elements
            .get_mut(host.0 as usize)
            .ok_or(SimError::UnknownElement(host))?;
        let NodeKind::Host(h) = &mut slot.kind else {
            return Err(SimError::NotAHost(host));
        };
        let idx = h.add_app(spec).map_err(SimError::Config)?;
        let id = AppId(self.apps.len() as u32);
        self.apps.push((host, idx));
        self.net.queue.push(self.net.now, Ev::HostTxReady(host));
        Ok(id)
    }

    /// Takes a link down or up at virtual time `at` (or now, if `at` is in the past).
    /// Going down drops everything queued, being serialized or on the wire
    /// ([`DropCause::LinkDown`]); packets offered while down are dropped the same way.
    pub fn schedule_link_state(
        &mut self,
        link: LinkId,
        at: Instant,
        up: bool,
    ) -> Result<(), SimError> {
        if link.0 as usize >= self.net.links.len() {
            return Err(SimError::UnknownLink(link));
        }
        self.net
            .queue
            .push(at.max(self.net.now), Ev::LinkState { link, up });
        Ok(())
    }

    /// Takes a link down or up now (see [`Sim::schedule_link_state`]).
    pub fn set_link_up(&mut self, link: LinkId, up: bool) -> Result<(), SimError> {
        if link.0 as usize >= self.net.links.len() {
            return Err(SimError::UnknownLink(link));
        }
        self.apply_link_state(link, up);
        Ok(())
    }
}
