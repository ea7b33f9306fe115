//! `/bin/crio` in test images: the cri-o stand-in (see `kios_e2e::standin::crio`).

fn main() {
    std::process::exit(kios_e2e::standin::crio::main(kios_e2e::standin::argv()));
}
