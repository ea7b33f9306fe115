//! `/bin/kubelet` in test images: the patched-kubelet stand-in (see
//! `kios_e2e::standin::kubelet`).

fn main() {
    std::process::exit(kios_e2e::standin::kubelet::main(kios_e2e::standin::argv()));
}
