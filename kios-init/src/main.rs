//! The kios-init binary: refuses to run unless it is PID 1, then hands over
//! to the runtime.

fn main() {
    // Safety guard, deliberately first: kios-init mounts over /proc, /dev and
    // /sys and at shutdown signals every process. Outside PID 1 of its own
    // namespace it would wreck the machine it runs on.
    if std::process::id() != 1 {
        eprintln!(
            "kios-init: refusing to run: this program must be PID 1 (it is pid {}); \
             run it as a kernel's init or as PID 1 of a fresh PID namespace",
            std::process::id()
        );
        std::process::exit(2);
    }
}
