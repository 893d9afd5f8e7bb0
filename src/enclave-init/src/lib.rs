//! PID 1 of the Nautilus enclave image.
//!
//! The kernel starts `/init` from the image's initramfs. [`boot`] then, in
//! this order, logging one console line per step (`nautilus-init: …`):
//!
//! 1. mounts [`mounts::TABLE`]: `/proc`, `/sys`, `/dev` (devtmpfs),
//!    `/dev/shm`, `/tmp` and `/run` (tmpfs), and cgroup v2 at
//!    `/sys/fs/cgroup` (the task sandbox creates per-slot cgroups there);
//! 2. loads kernel modules with `finit_module`: first every
//!    [`EXTRA_MODULES_DIR`]`/*.ko` in bytewise lexical order of file name
//!    (the convention for extra, uncompressed modules a test-only initramfs
//!    appended after the image's own may carry, e.g. `10-vsock.ko`,
//!    `20-vmw_vsock_virtio_transport_common.ko`; the image itself ships none),
//!    then [`NSM_MODULE`] when the image carries it (kernels with the driver
//!    built in need none). A module already loaded is fine; a module that
//!    fails to load is logged and skipped;
//! 3. makes `/dev/nsm` owned by root with mode 0600 at once when it exists:
//!    the driver registers it 0666, and nothing started later may share it;
//! 4. brings the loopback interface up;
//! 5. seeds the kernel RNG with 256 bytes from the NSM (`GetRandom`, credited
//!    with `RNDADDENTROPY`) when `/dev/nsm` exists;
//! 6. sends the Nitro boot heartbeat ([`heartbeat`]): connect to vsock CID 3
//!    port 9000, write `0xB7`, read it back. Without a parent (a VM) this fails,
//!    is logged, and the boot carries on;
//! 7. runs `/run.sh` and reaps every zombie while it runs ([`reaper`]);
//! 8. when `/run.sh` exits, powers off: SIGTERM to everything, two seconds, SIGKILL,
//!    `sync`, `reboot(RB_POWER_OFF)`.

pub mod heartbeat;
pub mod mounts;
pub mod reaper;
pub mod system;

use std::path::Path;
use std::time::Duration;

/// Directory whose `*.ko` files are loaded, in lexical order, before the NSM module.
pub const EXTRA_MODULES_DIR: &str = "/nautilus/modules";
/// Where the image carries the NSM driver, when the kernel needs it as a module.
pub const NSM_MODULE: &str = "/lib/modules/nsm.ko";
/// The NSM device the driver creates.
pub const NSM_DEVICE: &str = "/dev/nsm";
/// The program PID 1 runs once the system is up.
pub const RUN_SCRIPT: &str = "/run.sh";
/// How many random bytes from the NSM seed the kernel RNG.
pub const RNG_SEED_BYTES: usize = 256;

/// One console line, prefixed so boot logs can be searched.
pub fn log(msg: impl std::fmt::Display) {
    eprintln!("nautilus-init: {msg}");
}

/// Steps 1–7 of the module docs. Returns when `/run.sh` has exited.
pub fn boot() {
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

    let mut modules = system::modules_in(Path::new(EXTRA_MODULES_DIR));
    if Path::new(NSM_MODULE).exists() {
        modules.push(NSM_MODULE.into());
    }
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

    let mut command = std::process::Command::new(RUN_SCRIPT);
    command
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/root");
    log(format_args!("starting {RUN_SCRIPT}"));
    match reaper::supervise(&mut command) {
        Ok(outcome) => log(format_args!(
            "{RUN_SCRIPT} exited ({}); reaped {} other processes meanwhile",
            outcome.status, outcome.orphans_reaped
        )),
        Err(e) => log(format_args!("running {RUN_SCRIPT} failed: {e}")),
    }
}
