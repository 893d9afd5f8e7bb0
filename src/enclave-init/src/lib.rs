//! PID 1 of the Nautilus enclave image.
//!
//! The kernel starts `/init` from the image's initramfs. [`boot`] then, in
//! this order, logging one console line per step (`nautilus-init: …`):
//!
//! 0. makes `/` a bind mount of the initramfs ([`mounts::leave_rootfs`]), so
//!    the task runner's `pivot_root` works;
//! 1. mounts [`mounts::TABLE`]: `/proc`, `/sys`, `/dev` (devtmpfs),
//!    `/dev/shm`, `/tmp` and `/run` (tmpfs), and cgroup v2 at
//!    `/sys/fs/cgroup` (the task sandbox creates per-slot cgroups there);
//! 2. loads kernel modules with `finit_module`: every [`MODULES_DIR`]`/*.ko`
//!    in bytewise lexical order of file name (the build numbers them in the
//!    order `enclave/modules` lists them, dependencies first: virtio-mmio,
//!    vsock, its virtio transport, the NSM driver). A module already loaded
//!    is fine; a module that fails to load is logged and skipped;
//! 3. makes `/dev/nsm` owned by root with mode 0600 at once when it exists:
//!    the driver registers it 0666, and nothing started later may share it;
//! 4. brings the loopback interface up;
//! 5. seeds the kernel RNG with 256 bytes from the NSM (`GetRandom`, credited
//!    with `RNDADDENTROPY`) when `/dev/nsm` exists;
//! 6. sends the Nitro boot heartbeat ([`heartbeat`]): connect to vsock CID 3
//!    port 9000, write `0xB7`, read it back. Without a parent (a VM) this fails,
//!    is logged, and the boot carries on;
//! 7. decides the server's attestation ([`platform`]) and runs `/run.sh` with
//!    it in `NAUTILUS_ATTESTATION`, reaping every zombie while it runs
//!    ([`reaper`]);
//! 8. when `/run.sh` exits, ends the enclave: SIGTERM to everything, two
//!    seconds, SIGKILL, `sync`, `reboot(RB_AUTOBOOT)` as AWS's own init does
//!    (with `reboot=k` on the cmdline the Nitro hypervisor, or QEMU with
//!    `-no-reboot`, ends the enclave).

pub mod channel;
pub mod heartbeat;
pub mod mounts;
pub mod platform;
pub mod reaper;
pub mod system;

use std::io::BufRead;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Directory whose `*.ko` files are loaded, in lexical order of file name.
pub const MODULES_DIR: &str = "/lib/modules";
/// The NSM device the driver creates.
pub const NSM_DEVICE: &str = "/dev/nsm";
/// The program PID 1 runs once the system is up.
pub const RUN_SCRIPT: &str = "/run.sh";
/// How many random bytes from the NSM seed the kernel RNG.
pub const RNG_SEED_BYTES: usize = 256;

/// The enclave's log: the status and log channel serves it ([`channel`]).
pub fn book() -> &'static Arc<channel::LogBook> {
    static BOOK: OnceLock<Arc<channel::LogBook>> = OnceLock::new();
    BOOK.get_or_init(Default::default)
}

/// One log line, prefixed so boot logs can be searched.
pub fn log(msg: impl std::fmt::Display) {
    book().line(&format!("nautilus-init: {msg}"));
}

/// Steps 1–7 of the module docs. Returns when `/run.sh` has exited.
pub fn boot() {
    match mounts::leave_rootfs() {
        Ok(()) => log("/ is now a bind mount of the initramfs (pivot_root works for task boxes)"),
        Err(e) => log(format_args!(
            "moving / off the initial rootfs failed: {e}; task boxes cannot pivot_root"
        )),
    }
    for (mount, outcome) in mounts::mount_all(Path::new("/"), mounts::TABLE) {
        match outcome {
            Ok(mounts::Mounted::Now) => {
                log(format_args!("mounted {} on {}", mount.fstype, mount.target))
            }
            Ok(mounts::Mounted::Already) => log(format_args!(
                "{} already mounted on {}",
                mount.fstype, mount.target
            )),
            Err(e) => log(format_args!(
                "mounting {} on {} failed: {e}",
                mount.fstype, mount.target
            )),
        }
    }

    let modules = system::modules_in(Path::new(MODULES_DIR));
    if modules.is_empty() {
        log("no kernel modules to load");
    }
    for module in modules {
        match system::load_module(&module) {
            Ok(system::Loaded::Now) => log(format_args!("loaded {}", module.display())),
            Ok(system::Loaded::Already) => {
                log(format_args!("{} was already loaded", module.display()))
            }
            Err(e) => log(format_args!("loading {} failed: {e}", module.display())),
        }
    }

    match channel::serve_vsock(Arc::clone(book())) {
        Ok(()) => log(format_args!(
            "status and log channel on vsock port {}",
            channel::PORT
        )),
        Err(e) => log(format_args!(
            "the status and log channel (vsock port {}) failed: {e}",
            channel::PORT
        )),
    }

    let nsm = Path::new(NSM_DEVICE);
    if nsm.exists() {
        match system::restrict_to_root(nsm) {
            Ok(()) => log(format_args!("{NSM_DEVICE} is now root-only (0600)")),
            Err(e) => log(format_args!("restricting {NSM_DEVICE} failed: {e}")),
        }
    }

    match system::loopback_up() {
        Ok(()) => log("loopback interface lo is up"),
        Err(e) => log(format_args!("bringing lo up failed: {e}")),
    }

    if nsm.exists() {
        match system::seed_rng_from_nsm(RNG_SEED_BYTES) {
            Ok(n) => log(format_args!(
                "seeded the kernel RNG with {n} bytes from the NSM"
            )),
            Err(e) => log(format_args!(
                "seeding the kernel RNG from the NSM failed: {e}"
            )),
        }
    } else {
        log(format_args!(
            "no {NSM_DEVICE}: kernel RNG not seeded from the NSM"
        ));
    }

    match heartbeat::send_vsock(
        heartbeat::PARENT_CID,
        heartbeat::PORT,
        Duration::from_secs(heartbeat::TIMEOUT_SECS),
    ) {
        Ok(()) => log(format_args!(
            "heartbeat to the parent (vsock {}:{}) acknowledged",
            heartbeat::PARENT_CID,
            heartbeat::PORT
        )),
        Err(e) => log(format_args!(
            "heartbeat to the parent (vsock {}:{}) failed, carrying on: {e}",
            heartbeat::PARENT_CID,
            heartbeat::PORT
        )),
    }

    let attestation = platform::attestation(nsm, Path::new(platform::DSDT));
    log(format_args!(
        "attestation: {} ({})",
        attestation.as_str(),
        match attestation {
            platform::Attestation::Nsm => "the NSM is present",
            platform::Attestation::Dev => "no NSM, and the ACPI tables are QEMU's: a test VM",
            platform::Attestation::Unavailable =>
                "no NSM on a machine that is not a QEMU test VM: the NSM driver did not load",
        }
    ));
    // The console is for a test VM and a debug-mode enclave (whose PCRs read
    // as zeros); a production enclave's logs go to the channel only.
    let debug_mode = attestation == platform::Attestation::Nsm && system::nsm_debug_mode();
    let console = attestation == platform::Attestation::Dev || debug_mode;
    log(format_args!(
        "logs from here on: the channel{}",
        if console {
            " and the console"
        } else {
            " only (not the console)"
        }
    ));
    book().set_console(console);

    let mut command = std::process::Command::new(RUN_SCRIPT);
    command
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/root")
        .env("NAUTILUS_ATTESTATION", attestation.as_str());
    match log_pipe() {
        Ok(writer) => {
            if let Ok(copy) = writer.try_clone() {
                command.stdout(Stdio::from(copy));
            }
            command.stderr(Stdio::from(writer));
        }
        Err(e) => log(format_args!(
            "no pipe for {RUN_SCRIPT}'s output ({e}): it goes to the console"
        )),
    }
    log(format_args!("starting {RUN_SCRIPT}"));
    match reaper::supervise(&mut command) {
        Ok(outcome) => {
            log(format_args!(
                "{RUN_SCRIPT} exited ({}); reaped {} other processes meanwhile",
                outcome.status, outcome.orphans_reaped
            ));
            book().status(format_args!(
                "stopped: {RUN_SCRIPT} exited ({}); the enclave ends",
                outcome.status
            ));
        }
        Err(e) => {
            log(format_args!("running {RUN_SCRIPT} failed: {e}"));
            book().status(format_args!(
                "failed: running {RUN_SCRIPT} failed: {e}; the enclave ends"
            ));
        }
    }
    // Readers get the last lines before the enclave ends.
    std::thread::sleep(Duration::from_millis(500));
}

/// A pipe whose read end feeds [`book`] line by line on a thread of its own;
/// returns the write end.
fn log_pipe() -> std::io::Result<OwnedFd> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 with a valid two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned from here on.
    let (read, write) = unsafe {
        (
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[0]),
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[1]),
        )
    };
    std::thread::spawn(move || {
        let lines = std::io::BufReader::new(std::fs::File::from(read)).split(b'\n');
        for line in lines.map_while(Result::ok) {
            book().line(&String::from_utf8_lossy(&line));
        }
    });
    Ok(write)
}
