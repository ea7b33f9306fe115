//! modules.dep and /etc/kios/modules: the load order has each module once,
//! dependencies before their users, whatever cycles or depths the files
//! hold. Input: the wanted list, a NUL, then modules.dep.
#![no_main]

use std::collections::BTreeSet;

use kios_init::boot::modules::{
    load_order, module_name, parse_module_list, ModuleError, ModulesDep, MAX_WANTED,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (list, dep_text) = text.split_once('\0').unwrap_or(("", &text));
    let wanted = parse_module_list(list);
    assert!(wanted.len() <= MAX_WANTED);
    let dep = ModulesDep::parse(dep_text);
    // Wanted names that modules.dep does not know: every other one builtin.
    let builtin: BTreeSet<String> = wanted.iter().step_by(2).cloned().collect();
    let (order, errors) = load_order(&dep, &builtin, &wanted, "modules.dep");
    let mut seen = BTreeSet::new();
    for path in &order {
        assert!(seen.insert(path.clone()), "{path} twice in {order:?}");
        let name = module_name(path);
        let (_, deps) = &dep.modules[&name];
        for d in deps {
            // A dependency that is listed comes first (unless a cycle
            // passes through it, which is reported).
            if let Some((dpath, _)) = dep.modules.get(d) {
                let dpos = order.iter().position(|p| p == dpath);
                let pos = order.iter().position(|p| p == path);
                if let (Some(dpos), Some(pos)) = (dpos, pos) {
                    if dpos > pos {
                        assert!(
                            errors.iter().any(|e| matches!(
                                e,
                                ModuleError::Cycle { .. } | ModuleError::TooDeep { .. }
                            )),
                            "{d} after {name} without a cycle: {order:?}"
                        );
                    }
                }
            }
        }
    }
});
