//! `/init` of the enclave image; see the library docs for what it does.

fn main() {
    if std::process::id() != 1 {
        // Mounting over /proc or powering the machine off is only ever PID 1's job.
        enclave_init::log("refusing to run: this is the enclave image's PID 1, not a command");
        std::process::exit(2);
    }
    enclave_init::boot();
    enclave_init::system::power_off();
}
