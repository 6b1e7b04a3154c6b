//! Batches: queuing flow-mods and a barrier on the switch, (re)installing the whole table,
//! and settling a batch when its barrier reply arrives (confirm its tokens or resync).

use super::*;

impl Switch {
    /// Queues a batch on the connected switch; without one, its tokens wait.
    pub(super) fn send_batch(
        &mut self,
        mods: Vec<(FlowMod, String)>,
        tokens: Vec<u64>,
        full: bool,
        attempt: u32,
    ) {
        let Some(l) = self
            .link
            .as_mut()
            .filter(|l| l.conn.state() == State::Connected)
        else {
            self.waiting.extend(tokens);
            return;
        };
        let mut batch = Batch {
            barrier: 0,
            sent: Vec::with_capacity(mods.len()),
            tokens,
            errors: 0,
            attempt,
            full,
        };
        let mut refused = Vec::new();
        let mut writer_full = false;
        for (fm, what) in mods {
            let mut sent = l.conn.send_flow_mod(&fm);
            if sent == Err(SendError::QueueFull) {
                // The connection's own queue is bounded: move its bytes to the writer.
                writer_full = !drain_into_writer(l, &mut self.counters);
                if writer_full {
                    break;
                }
                sent = l.conn.send_flow_mod(&fm);
            }
            match sent {
                Ok(xid) => batch.sent.push(Sent { xid, what }),
                Err(e) => {
                    batch.errors += 1;
                    refused.push(format!("flow-mod not sent ({e}): {what}"));
                }
            }
        }
        self.counters.flow_mods_sent += batch.sent.len() as u64;
        match (writer_full, l.conn.send_barrier()) {
            (false, Ok(xid)) => {
                batch.barrier = xid;
                self.counters.barriers_sent += 1;
                self.batches.push_back(batch);
            }
            (_, Err(e)) => {
                refused.push(format!("barrier not sent ({e})"));
                self.waiting.extend(batch.tokens);
            }
            (true, Ok(_)) => self.waiting.extend(batch.tokens),
        }
        self.counters.send_refused += refused.len() as u64;
        for r in refused {
            error!("{r}");
            self.note_error(r);
        }
        if writer_full {
            error!("switch writer queue full; closing the connection");
            self.drop_link("writer queue full");
        }
    }

    /// Delete all flows (on a fresh connection), then add the whole table, then a barrier.
    pub(super) fn install(
        &mut self,
        table: &[Rule],
        tokens: Vec<u64>,
        from_scratch: bool,
        attempt: u32,
    ) {
        let mut mods = Vec::with_capacity(table.len() + 1);
        if from_scratch {
            mods.push((flows::delete_all(), "delete all flows".to_owned()));
        }
        mods.extend(table.iter().map(|r| {
            (
                flows::flow_mod(r, FlowModCommand::Add),
                format!("Add {}", flows::describe(r)),
            )
        }));
        self.counters.full_installs += 1;
        info!(
            rules = table.len(),
            from_scratch, "installing the flow table"
        );
        self.send_batch(mods, tokens, true, attempt);
    }

    /// A batch's barrier reply arrived: its tokens if it went through, else a resync.
    pub(super) fn finish_batch(&mut self, b: Batch, table: &[Rule]) -> Vec<u64> {
        if b.errors == 0 {
            self.counters.batches_confirmed += 1;
            if b.full {
                self.installed = true;
            }
            return b.tokens;
        }
        self.counters.batches_failed += 1;
        if b.attempt < MAX_ATTEMPTS {
            self.counters.resyncs += 1;
            warn!(
                errors = b.errors,
                attempt = b.attempt,
                "flow-mods failed; re-sending the whole table before confirming"
            );
            self.install(table, b.tokens, false, b.attempt + 1);
        } else {
            self.counters.tokens_given_up += b.tokens.len() as u64;
            let msg = format!(
                "switch table update failed {MAX_ATTEMPTS} times; {} redirect(s) stay unconfirmed",
                b.tokens.len()
            );
            error!("{msg}");
            self.note_error(msg);
        }
        Vec::new()
    }
}
