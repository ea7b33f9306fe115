//! `/bin/pinns` in test images: a stand-in that says so and fails (the
//! cri-o stand-in never calls it; a real cri-o with this pinns would fail
//! loudly instead of silently).

fn main() {
    eprintln!("KIOS-E2E pinns stand-in: this image carries no real pinns");
    std::process::exit(1);
}
