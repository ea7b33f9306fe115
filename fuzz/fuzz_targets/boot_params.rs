//! The kernel command line and init's environment as boot parameters:
//! never fails, bad values keep the defaults (with a warning), the data
//! partition device stays under /dev without `..`.
#![no_main]

use kios_init::boot::datapart::DatapartSpec;
use kios_init::boot::{cmdline_params, BootConfig, MAX_DATAPART_TIMEOUT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The part before a NUL is the environment (one `k=v` per line), the
    // rest the command line.
    let (env_text, cmdline) = text.split_once('\0').unwrap_or(("", &text));
    let env: Vec<(String, String)> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = cmdline_params(cmdline);
    let cfg = BootConfig::from_env_and_cmdline(&env, cmdline);
    let again = cfg.with_cmdline(cmdline);
    for c in [&cfg, &again] {
        assert!(c.datapart_timeout <= MAX_DATAPART_TIMEOUT);
        if let DatapartSpec::Device(path) = &c.datapart {
            assert!(path.starts_with("/dev/"), "{path:?}");
            assert!(
                !path.components().any(|p| p.as_os_str() == ".."),
                "{path:?}"
            );
        }
    }
});
