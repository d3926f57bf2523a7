//! The userfaultfd kernel interface: a descriptor in write-protect mode, registration,
//! protection changes, and the messages the kernel sends.
//!
//! Raw ioctls with the ABI constants defined here: Debian's headers are older than the
//! running kernel (no `UFFD_FEATURE_WP_UNPOPULATED`), and the `userfaultfd` crate needs
//! libclang at build time for its bindings.

use crate::base::range::Range;
use crate::base::sys;

const UFFD_API: u64 = 0xaa;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xaa << 8) | nr
}

const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, 0x3f, 24);
const UFFDIO_REGISTER: u64 = ioc(IOC_READ | IOC_WRITE, 0x00, 32);
const UFFDIO_UNREGISTER: u64 = ioc(IOC_READ, 0x01, 16);
const UFFDIO_WAKE: u64 = ioc(IOC_READ, 0x02, 16);
const UFFDIO_WRITEPROTECT: u64 = ioc(IOC_READ | IOC_WRITE, 0x06, 24);
/// `/dev/userfaultfd`'s ioctl that returns a new descriptor (Linux 6.1).
const USERFAULTFD_IOC_NEW: u64 = 0xaa << 8; // _IO(0xaa, 0x00)

const REGISTER_MODE_WP: u64 = 1 << 1;
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;

pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub const FEATURE_THREAD_ID: u64 = 1 << 8;
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;
const FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;

const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;
const PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
const PAGEFAULT_FLAG_WP: u64 = 1 << 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `struct uffd_msg`: an event byte, padding, then 24 bytes of arguments.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawMsg {
    event: u8,
    _reserved: [u8; 7],
    arg: [u64; 3],
}

/// What the kernel reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A write to a write-protected page at `addr` (page aligned) by thread `tid`.
    WriteFault { addr: usize, tid: u32 },
    /// Another page fault (not expected in write-protect-only mode).
    OtherFault { addr: usize, flags: u64 },
    /// `madvise(DONTNEED/REMOVE)` over a range: its pages read as zero from now on.
    Remove(Range),
    /// `munmap` (or an mmap over it) of a range.
    Unmap(Range),
    /// `mremap` moved `len` bytes from `from` to `to`.
    Remap { from: usize, to: usize, len: usize },
    /// An event this module does not know.
    Unknown(u8),
}

/// Why set-up or an operation failed.
#[derive(Debug)]
pub struct UffdError {
    pub what: &'static str,
    pub errno: i32,
}

impl UffdError {
    /// The kernel asks to read pending events first (`mmap_changing`).
    pub fn is_again(&self) -> bool {
        self.errno == libc::EAGAIN
    }
}

impl core::fmt::Display for UffdError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.what,
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

fn fail<T>(what: &'static str) -> Result<T, UffdError> {
    Err(UffdError {
        what,
        errno: sys::errno(),
    })
}

/// An open userfaultfd descriptor, closed on drop.
pub struct Uffd {
    fd: i32,
    features: u64,
}

/// The features the engine asks for: write-protect faults, protection of pages never
/// touched, the events that zap or move tracked memory, and the faulting thread's id.
pub const WANTED: u64 = FEATURE_PAGEFAULT_FLAG_WP
    | FEATURE_WP_UNPOPULATED
    | FEATURE_EVENT_REMOVE
    | FEATURE_EVENT_UNMAP
    | FEATURE_EVENT_REMAP
    | FEATURE_THREAD_ID;

/// The features of the second descriptor, for dirty tracking under holders: the kernel
/// resolves a write to a protected page itself (it only clears the page's uffd-wp bit, no
/// message, no wait), and `PAGEMAP_SCAN` lists and protects again the pages written
/// (see `pagemap::Pagemap::take_written`). Pages never touched are protected too, so a
/// read that maps the zero page does not count as a write. No events: nothing reads
/// this descriptor, and an event would hold the unmapping thread until read.
pub const WANTED_ASYNC: u64 = FEATURE_WP_ASYNC | FEATURE_WP_UNPOPULATED;

fn ioctl<T>(fd: i32, req: u64, arg: &mut T) -> bool {
    // SAFETY: `arg` is the argument structure the request is defined with; the kernel
    // reads and writes only within it.
    unsafe { libc::ioctl(fd, req as _, arg as *mut T) == 0 }
}

impl Uffd {
    /// A new userfaultfd descriptor (the syscall, else `/dev/userfaultfd`), adopted.
    fn open_adopted() -> Result<i32, UffdError> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: userfaultfd takes only flags and returns a new descriptor or -1.
        let mut fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) } as i32;
        if fd < 0 {
            let first = sys::errno();
            // SAFETY: a plain open of a device node.
            let dev =
                unsafe { libc::open(c"/dev/userfaultfd".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
            if dev >= 0 {
                // SAFETY: USERFAULTFD_IOC_NEW takes the flags by value.
                fd = unsafe { libc::ioctl(dev, USERFAULTFD_IOC_NEW as _, flags) };
                let e = sys::errno();
                // SAFETY: closing the device descriptor we opened (the system call: the
                // shim's own `close` is the program's).
                unsafe { libc::syscall(libc::SYS_close, dev) };
                sys::set_errno(e);
            }
            if fd < 0 {
                sys::set_errno(first);
                return fail("userfaultfd (needs root, CAP_SYS_PTRACE, vm.unprivileged_userfaultfd=1 or access to /dev/userfaultfd)");
            }
        }
        // Out of the program's way (see `fds`), and owned from here: an error below
        // closes it.
        crate::base::fds::adopt(fd).map_err(|e| UffdError {
            what: "moving the userfaultfd descriptor out of the program's way",
            errno: match e {
                crate::base::fds::FdError::Stat(e)
                | crate::base::fds::FdError::Move(e)
                | crate::base::fds::FdError::Create(e) => e,
                crate::base::fds::FdError::TableFull => libc::EMFILE,
            },
        })
    }

    /// Opens a descriptor (the syscall, else `/dev/userfaultfd`) in non-blocking,
    /// close-on-exec mode and negotiates `features`. Without `UFFD_USER_MODE_ONLY`: writes
    /// the kernel makes for the program (read(2) into a protected buffer) must trap too.
    pub fn open(features: u64) -> Result<Uffd, UffdError> {
        // Opened and moved with the program's closes held off (see `fds`).
        let fd = crate::base::fds::creating(Self::open_adopted)?;
        let mut u = Uffd { fd, features: 0 };
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        if !ioctl(fd, UFFDIO_API, &mut api) {
            return fail("UFFDIO_API (the kernel lacks a requested feature: write-protect of unpopulated pages needs Linux 6.4)");
        }
        u.features = api.features;
        Ok(u)
    }

    /// A view of a descriptor opened by [`Uffd::open`] and kept open by its owner; the
    /// view never closes it.
    ///
    /// # Safety
    /// `fd` must stay an open userfaultfd descriptor while the view is used.
    pub unsafe fn borrowed(fd: i32) -> core::mem::ManuallyDrop<Uffd> {
        core::mem::ManuallyDrop::new(Uffd {
            fd,
            features: WANTED,
        })
    }

    /// Whether an event is queued on the descriptor now (never waits).
    pub fn events_queued(&self) -> bool {
        crate::base::sys::poll_in_now(self.fd) > 0
    }

    pub fn fd(&self) -> i32 {
        self.fd
    }

    #[cfg(test)]
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Registers `r` for write-protect faults.
    pub fn register(&self, r: Range) -> Result<(), UffdError> {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: r.start as u64,
                len: r.len() as u64,
            },
            mode: REGISTER_MODE_WP,
            ioctls: 0,
        };
        if ioctl(self.fd, UFFDIO_REGISTER, &mut reg) {
            Ok(())
        } else {
            fail("UFFDIO_REGISTER")
        }
    }

    /// Unregisters `r` (what of it is registered with this descriptor): its pages lose
    /// their protection and the threads waiting on faults in it are woken.
    pub fn unregister(&self, r: Range) -> Result<(), UffdError> {
        let mut range = UffdioRange {
            start: r.start as u64,
            len: r.len() as u64,
        };
        if ioctl(self.fd, UFFDIO_UNREGISTER, &mut range) {
            Ok(())
        } else {
            fail("UFFDIO_UNREGISTER")
        }
    }

    /// Write-protects `r` (`protect`) or removes the protection, which also wakes the
    /// threads waiting on faults in `r`. Fails with EAGAIN while an UNMAP, REMOVE or REMAP
    /// event is queued and not yet read: the caller must read events and try again.
    pub fn write_protect(&self, r: Range, protect: bool) -> Result<(), UffdError> {
        let mut wp = UffdioWriteprotect {
            range: UffdioRange {
                start: r.start as u64,
                len: r.len() as u64,
            },
            mode: if protect { WRITEPROTECT_MODE_WP } else { 0 },
        };
        if ioctl(self.fd, UFFDIO_WRITEPROTECT, &mut wp) {
            Ok(())
        } else {
            fail("UFFDIO_WRITEPROTECT")
        }
    }

    /// Wakes the threads waiting on faults in `r` without changing protection (they
    /// retry their access).
    pub fn wake(&self, r: Range) -> Result<(), UffdError> {
        let mut range = UffdioRange {
            start: r.start as u64,
            len: r.len() as u64,
        };
        if ioctl(self.fd, UFFDIO_WAKE, &mut range) {
            Ok(())
        } else {
            fail("UFFDIO_WAKE")
        }
    }

    /// Reads the pending events into `out` without blocking; returns how many.
    pub fn read_events(&self, out: &mut [Event]) -> usize {
        let mut raw = [RawMsg {
            event: 0,
            _reserved: [0; 7],
            arg: [0; 3],
        }; 32];
        let want = out.len().min(raw.len());
        // SAFETY: reading whole messages into a buffer of `want` of them.
        let n = unsafe {
            libc::read(
                self.fd,
                raw.as_mut_ptr().cast(),
                want * core::mem::size_of::<RawMsg>(),
            )
        };
        if n <= 0 {
            return 0;
        }
        let count = n as usize / core::mem::size_of::<RawMsg>();
        for (o, m) in out.iter_mut().zip(&raw[..count]) {
            *o = decode(m);
        }
        count
    }
}

fn decode(m: &RawMsg) -> Event {
    match m.event {
        EVENT_PAGEFAULT => {
            let (flags, addr) = (m.arg[0], crate::base::page::floor(m.arg[1] as usize));
            if flags & PAGEFAULT_FLAG_WP != 0 && flags & PAGEFAULT_FLAG_WRITE != 0 {
                Event::WriteFault {
                    addr,
                    tid: m.arg[2] as u32,
                }
            } else {
                Event::OtherFault { addr, flags }
            }
        }
        EVENT_REMOVE => Event::Remove(Range::new(m.arg[0] as usize, m.arg[1] as usize)),
        EVENT_UNMAP => Event::Unmap(Range::new(m.arg[0] as usize, m.arg[1] as usize)),
        EVENT_REMAP => Event::Remap {
            from: m.arg[0] as usize,
            to: m.arg[1] as usize,
            len: m.arg[2] as usize,
        },
        e => Event::Unknown(e),
    }
}

impl Drop for Uffd {
    fn drop(&mut self) {
        // Closing our own descriptor (if it is still ours) wakes any waiting faulters.
        crate::base::fds::release(self.fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn need_uffd() -> Uffd {
        Uffd::open(WANTED).unwrap_or_else(|e| {
            panic!("userfaultfd with write-protect is required for this test and the kernel refused it: {e}")
        })
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_abi() {
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(UFFDIO_WRITEPROTECT, 0xc018_aa06);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(core::mem::size_of::<RawMsg>(), 32);
    }

    #[test]
    fn a_write_to_a_protected_page_traps_until_unprotected() {
        let u = need_uffd();
        assert_eq!(
            u.features() & WANTED,
            WANTED,
            "kernel lacks a wanted feature"
        );
        let len = 16 * 4096;
        let base = sys::map_anon(len, false).unwrap() as usize;
        let r = Range::new(base, base + len);
        u.register(r).unwrap();
        // Page 3 was never touched: WP_UNPOPULATED protects it anyway.
        u.write_protect(r, true).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let writer = std::thread::spawn(move || {
            // SAFETY: the page lies inside the mapping made above.
            unsafe { ((base + 3 * 4096 + 8) as *mut u64).write_volatile(7) };
            d.store(true, Ordering::SeqCst);
        });
        let mut ev = [Event::Unknown(0); 4];
        let got = loop {
            let n = u.read_events(&mut ev);
            if n > 0 {
                break ev[0];
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert!(
            matches!(got, Event::WriteFault { addr, tid } if addr == base + 3 * 4096 && tid != 0),
            "{got:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(
            !done.load(Ordering::SeqCst),
            "the write went through a protected page"
        );
        u.write_protect(Range::new(base + 3 * 4096, base + 4 * 4096), false)
            .unwrap();
        writer.join().unwrap();
        // SAFETY: reading back inside the mapping.
        assert_eq!(unsafe { ((base + 3 * 4096 + 8) as *const u64).read() }, 7);
        // Close first: with EVENT_UNMAP registered, munmap would wait for someone to
        // read its UNMAP event.
        drop(u);
        // SAFETY: our mapping, no longer used.
        unsafe { libc::syscall(libc::SYS_munmap, base, len) };
    }
}
