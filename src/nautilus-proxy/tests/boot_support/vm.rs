//! One QEMU guest whose vsock device is `vhost-device-vsock`: the host side
//! of the guest's vsock is only a Unix socket (hybrid vsock), never an
//! `AF_VSOCK` socket on this host.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::deps::Deps;
use crate::support::die_with_parent;

/// The guest's context id; any value from 3 up works for a lone VM.
pub const GUEST_CID: u32 = 16;
/// vCPUs, as `make run-enclave`'s default CPU_COUNT.
pub const CPUS: u32 = 2;

/// A running guest; both processes are killed on drop.
pub struct Vm {
    qemu: Child,
    vhost: Child,
    stdin: Option<ChildStdin>,
    console: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// The hybrid-vsock Unix socket: `CONNECT <port>\n` reaches the guest.
    pub uds: PathBuf,
}

impl Vm {
    /// Starts `vhost-device-vsock`, then QEMU booting `kernel` with `initrd`.
    pub fn start(
        deps: &Deps,
        work: &Path,
        kernel: &Path,
        initrd: &Path,
        cmdline: &str,
        memory_mib: u32,
    ) -> anyhow::Result<Self> {
        let vhost_sock = work.join("vhost-user.sock");
        let uds = work.join("vm.vsock");
        let vhost_log = std::fs::File::create(work.join("vhost-device-vsock.log"))?;
        let mut vhost = die_with_parent(&mut Command::new(&deps.vhost_device_vsock))
            .arg("--guest-cid")
            .arg(GUEST_CID.to_string())
            .arg("--socket")
            .arg(&vhost_sock)
            .arg("--uds-path")
            .arg(&uds)
            .stdin(Stdio::null())
            .stdout(vhost_log.try_clone()?)
            .stderr(vhost_log)
            .spawn()
            .context("starting vhost-device-vsock")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !vhost_sock.exists() {
            if let Some(status) = vhost.try_wait()? {
                bail!("vhost-device-vsock exited ({status}) before creating its socket");
            }
            if Instant::now() > deadline {
                let _ = vhost.kill();
                let _ = vhost.wait();
                bail!("vhost-device-vsock did not create {}", vhost_sock.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }

        let mut qemu = Command::new(&deps.qemu);
        if deps.kvm {
            qemu.args(["-accel", "kvm"]);
        } else {
            // Without KVM there is no kvmclock, and microvm has no HPET or
            // PM timer: the kernel's TSC calibration against the PIT fails
            // under a loaded host and the boot stalls. Instruction-counted
            // time (icount) makes the PIT and the TSC agree.
            qemu.args(["-accel", "tcg", "-icount", "shift=auto,sleep=on"]);
        }
        // QEMU's microvm, as close to a Nitro enclave as QEMU 7.2 gets: no
        // PCI (the image's cmdline has AWS's pci=off), virtio devices on
        // virtio-mmio described in ACPI (found as on Nitro), a 16550 on
        // ttyS0, and the cmdline exactly as given (auto-kernel-cmdline=off).
        // The legacy PIT and PIC stay on for timekeeping without KVM.
        qemu.arg("-M")
            .arg(
                "microvm,acpi=on,pcie=off,rtc=on,pit=on,pic=on,\
                 auto-kernel-cmdline=off,memory-backend=mem",
            )
            .args(["-smp", &CPUS.to_string()])
            .args(["-no-reboot", "-nodefaults"])
            .args(["-display", "none", "-serial", "stdio"])
            .args(["-m", &format!("{memory_mib}M")])
            // vhost-user needs guest memory the device process can map.
            .args([
                "-object",
                &format!("memory-backend-memfd,id=mem,size={memory_mib}M,share=on"),
            ])
            .arg("-chardev")
            .arg(format!("socket,id=vsock,path={}", vhost_sock.display()))
            .args(["-device", "vhost-user-vsock-device,chardev=vsock"])
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", cmdline])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        eprintln!("boot-test: {qemu:?}");
        let mut qemu = match die_with_parent(&mut qemu).spawn() {
            Ok(q) => q,
            Err(e) => {
                let _ = vhost.kill();
                let _ = vhost.wait();
                return Err(e).context("starting QEMU");
            }
        };
        let console = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for pipe in [
            qemu.stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            qemu.stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let console = Arc::clone(&console);
            readers.push(std::thread::spawn(move || copy_console(pipe, &console)));
        }
        Ok(Self {
            stdin: qemu.stdin.take(),
            qemu,
            vhost,
            console,
            readers,
            uds,
        })
    }

    /// Everything the guest printed so far.
    pub fn console(&self) -> String {
        self.console.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Waits for `needle` on the console after byte offset `from`; returns
    /// the offset just past it. Fails if QEMU exits or `timeout` passes.
    pub fn wait_for(
        &mut self,
        needle: &str,
        from: usize,
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let console = self.console();
            if let Some(at) = console.get(from..).and_then(|c| c.find(needle)) {
                return Ok(from + at + needle.len());
            }
            if let Some(status) = self.qemu.try_wait()? {
                bail!("QEMU exited ({status}) before the console showed {needle:?}");
            }
            if Instant::now() > deadline {
                bail!("the console did not show {needle:?} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types a line on the guest's serial console.
    pub fn type_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("console input closed")?;
        stdin.write_all(format!("{line}\n").as_bytes())?;
        stdin.flush()?;
        Ok(())
    }
}

fn copy_console(mut pipe: Box<dyn Read + Send>, console: &Mutex<String>) {
    let mut buf = [0u8; 4096];
    let mut line = Vec::new();
    let mut escape = Escape::None;
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let text = strip_escapes(&buf[..n], &mut escape);
        if let Ok(mut c) = console.lock() {
            c.push_str(&String::from_utf8_lossy(&text));
        }
        // Echoed line by line so the test's output shows the boot as it goes.
        for &b in &text {
            if b == b'\n' {
                eprintln!("vm| {}", String::from_utf8_lossy(&line));
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
}

/// Where a byte stream is in a terminal escape sequence (colours from the
/// server's logs, screen clears from the firmware), kept across reads.
#[derive(Clone, Copy)]
enum Escape {
    None,
    Esc,
    Csi,
}

/// The console text without escape sequences and carriage returns, so it
/// reads as plain lines and can be searched.
fn strip_escapes(bytes: &[u8], state: &mut Escape) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        *state = match (*state, b) {
            (Escape::None, 0x1b) => Escape::Esc,
            (Escape::None, b'\r') => Escape::None,
            (Escape::None, _) => {
                out.push(b);
                Escape::None
            }
            (Escape::Esc, b'[') => Escape::Csi,
            // Two-byte sequences (ESC c, ESC 7, ...).
            (Escape::Esc, _) => Escape::None,
            // Parameters until the final byte.
            (Escape::Csi, 0x40..=0x7e) => Escape::None,
            (Escape::Csi, _) => Escape::Csi,
        };
    }
    out
}

impl Drop for Vm {
    fn drop(&mut self) {
        drop(self.stdin.take());
        for child in [&mut self.qemu, &mut self.vhost] {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The console's last lines are read once QEMU's pipes close.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_stripped_across_reads() {
        let mut state = Escape::None;
        let mut out = strip_escapes(b"\x1b[2mlisten\x1b[0m=vsock://3000\r\n\x1b[", &mut state);
        out.extend(strip_escapes(b"32m INFO\x1b", &mut state));
        out.extend(strip_escapes(b"c done", &mut state));
        assert_eq!(
            String::from_utf8_lossy(&out),
            "listen=vsock://3000\n INFO done"
        );
    }
}
