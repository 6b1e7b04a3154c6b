//! Small libc helpers shared by the I/O modules.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Waits up to `timeout` until one of `fds` has its events (`libc::POLLIN`,
/// `libc::POLLOUT`) ready; true if one has. Interrupted waits count as "not ready".
pub fn poll_fds(fds: &[(RawFd, libc::c_short)], timeout: Duration) -> bool {
    let mut pfds: [libc::pollfd; 2] = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 2];
    let n = fds.len().min(pfds.len());
    for (p, &(fd, events)) in pfds.iter_mut().zip(&fds[..n]) {
        p.fd = fd;
        p.events = events;
    }
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `n` valid pollfds, a valid timespec, no signal mask.
    let r = unsafe { libc::ppoll(pfds.as_mut_ptr(), n as libc::nfds_t, &ts, std::ptr::null()) };
    r > 0 && pfds[..n].iter().any(|p| p.revents & p.events != 0)
}

/// Waits up to `timeout` for `events` on one descriptor.
pub fn poll_fd(fd: RawFd, events: libc::c_short, timeout: Duration) -> bool {
    poll_fds(&[(fd, events)], timeout)
}

/// Wakes a sleeping packet thread when another thread has queued work for it (an eventfd
/// the packet loop polls together with its socket).
#[derive(Debug)]
pub struct Waker(OwnedFd);

impl Waker {
    /// A new, unsignalled waker.
    pub fn new() -> io::Result<Waker> {
        // SAFETY: plain eventfd(2).
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(os_error("eventfd"));
        }
        // SAFETY: a fresh descriptor we own.
        Ok(Waker(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Signals the waker (cheap; never blocks).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN) is still signalled.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the signal.
    pub fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; EAGAIN (not signalled) is fine.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    /// The descriptor to poll for `POLLIN`.
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An `io::Error` from errno, with what failed.
pub fn os_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cpu {cpu} out of range"),
        ));
    }
    // SAFETY: cpu_set_t is plain data; CPU_SET stays in bounds (checked above);
    // sched_setaffinity(0, ..) applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(os_error(&format!("sched_setaffinity(cpu {cpu})")));
        }
    }
    Ok(())
}

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; a failure leaves it zero.
    unsafe { libc::clock_gettime(id, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// CPU time (user + system) the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_time() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time (user + system) of the whole process, every thread included, ended ones too
/// (`CLOCK_PROCESS_CPUTIME_ID`).
pub fn process_cpu_time() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// Times the calling thread was preempted: involuntary context switches
/// (`getrusage(RUSAGE_THREAD)`, `ru_nivcsw`).
pub fn thread_preemptions() -> u64 {
    // SAFETY: plain data, filled by the call.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid rusage to fill; on failure it stays zero.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    ru.ru_nivcsw.max(0) as u64
}
