//! modprobe's planner over arbitrary modules.dep, modules.softdep,
//! modules.alias and modules.builtin text and /etc/kios/modules: the plan
//! has each module once, and a module's modules.dep dependencies that are
//! listed come before it unless a cycle (reported) passes through them.
//! Input: the wanted list, then the four files, separated by NUL bytes.
#![no_main]

use std::collections::BTreeSet;

use kios_init::boot::modules::{parse_module_list, MAX_WANTED};
use kios_rootfs::modprobe::{module_name, ModuleIndex, Problem};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let list = parts.next().unwrap_or("");
    let dep = parts.next().unwrap_or("");
    let softdep = parts.next().unwrap_or("");
    let alias = parts.next().unwrap_or("");
    let builtin = parts.next().unwrap_or("");
    let wanted = parse_module_list(list);
    assert!(wanted.len() <= MAX_WANTED);
    let index = ModuleIndex::parse(dep, softdep, alias, builtin);
    let plan = index.plan(&wanted);
    let mut seen = BTreeSet::new();
    for step in &plan.steps {
        assert!(
            seen.insert(step.name.clone()),
            "{} twice: {plan:?}",
            step.name
        );
        assert!(
            !plan.builtin.contains(&step.name),
            "{} both loaded and built in",
            step.name
        );
    }
    let cycle = plan
        .problems
        .iter()
        .any(|p| matches!(p, Problem::Cycle { .. } | Problem::TooDeep { .. }));
    let position = |name: &str| plan.steps.iter().position(|s| s.name == name);
    for (pos, step) in plan.steps.iter().enumerate() {
        for d in &step.deps {
            if let Some(dpos) = position(&module_name(d)) {
                assert!(
                    dpos < pos || cycle,
                    "{d} after {} without a cycle: {plan:?}",
                    step.name
                );
            }
        }
    }
});
