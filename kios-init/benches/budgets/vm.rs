//! Boot in a qemu VM on Debian's stock kernel (the e2e VM harness: a data
//! disk found by its GPT type GUID, the cri-o and kubelet stand-ins),
//! `--runs` cold boots (default 3). The accelerator is the harness's: TCG
//! (software emulation) unless `KIOS_VM_KVM=1`; the figures' names say
//! which.
//!
//! The timeline of each boot comes from two clocks that both start near
//! kernel start and do not jump: the kernel's printk timestamp of its
//! `Run /init as init process` line on the serial console (kernel start to
//! the exec of init; `printk.time=1` is on the command line), and init's
//! milestones from the `boot` request (`kiosctl boot -o json` in the
//! node's admin script), each `offset_ms` since init's own start on
//! CLOCK_MONOTONIC. The gap between the kernel's exec of /init and init's
//! first instruction of `main` is inside "kernel start to init start".
//!
//! Figures: kernel start to init start; each phase of init (from the
//! previous milestone, or init start, to this one: mounts, modules,
//! datapart, network, socket, crio-start, crio-socket, kubelet-start);
//! init start to kubelet exec; kernel start to kubelet exec; and init's
//! own work: init start to kubelet exec less the wait for cri-o's socket
//! (crio-start to crio-socket), the modules and the mounts. No budget is
//! stated for the VM (reported only). A reference init cannot run in the
//! VM image: no reference samples.

use anyhow::{anyhow, Context, Result};
use kios_e2e::figure::Figure;
use kios_e2e::vm::{deadline, Node, NodeSpec, Script};

use crate::Opts;

const BOOTS: usize = 3;

/// The kernel's line when it execs the initramfs's init.
const RUN_INIT: &str = "Run /init as init process";

/// One boot's timeline, in ms.
struct Timeline {
    /// Kernel start to the exec of /init (printk clock).
    init_start: f64,
    /// (name, offset since init start).
    milestones: Vec<(String, f64)>,
}

/// `[    1.234567] text` -> 1234.567 ms.
fn printk_ms(line: &str) -> Option<f64> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (stamp, _) = rest.split_once(']')?;
    stamp.trim().parse::<f64>().ok().map(|s| s * 1000.0)
}

fn boot_once(i: usize) -> Result<Timeline> {
    let mut spec = NodeSpec::new(&format!("bench-vm-{i}"));
    let mut script = Script::new();
    let boot_n = script.kiosctl("boot -o json");
    spec.script = Some(script);
    let mut node = Node::prepare(&spec).context("cannot prepare the VM node")?;
    let mut config = node.next_config();
    config.cmdline.push("printk.time=1".into());
    let mut vm = node.boot_with(config).context("cannot start the VM")?;
    let run_init = vm
        .wait_for(RUN_INIT, deadline::BOOT)
        .context("the kernel did not start init")?;
    let init_start = printk_ms(&run_init.text)
        .ok_or_else(|| anyhow!("no printk timestamp on {:?}", run_init.text))?;
    let boot = vm
        .wait_admin(boot_n, deadline::BOOT)
        .context("no `kiosctl boot` output from the node")?;
    let reply = boot
        .json()
        .ok_or_else(|| anyhow!("kiosctl boot -o json: {}", boot.text()))?;
    let milestones = reply["milestones"]
        .as_array()
        .ok_or_else(|| anyhow!("no milestones: {reply}"))?
        .iter()
        .map(|m| Some((m["name"].as_str()?.to_string(), m["offset_ms"].as_f64()?)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| anyhow!("a milestone without name or offset_ms: {reply}"))?;
    vm.kill();
    Ok(Timeline {
        init_start,
        milestones,
    })
}

fn offset(t: &Timeline, name: &str) -> Result<f64> {
    t.milestones
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, o)| *o)
        .ok_or_else(|| anyhow!("no {name} milestone in {:?}", t.milestones))
}

pub fn figures(opts: &Opts) -> Result<Vec<Figure>> {
    if opts.reference.is_some() {
        eprintln!("budgets: the VM figures have no reference run (kios-init only)");
    }
    let accel = if std::env::var("KIOS_VM_KVM").is_ok_and(|v| v == "1") {
        "KVM"
    } else {
        "TCG"
    };
    let boots = opts.runs.unwrap_or(BOOTS);
    let timelines = (0..boots)
        .map(|i| {
            eprintln!("budgets: VM boot {} of {boots} ({accel})", i + 1);
            boot_once(i)
        })
        .collect::<Result<Vec<_>>>()?;

    let mut kernel_to_init = Vec::new();
    let mut init_to_kubelet = Vec::new();
    let mut kernel_to_kubelet = Vec::new();
    let mut own = Vec::new();
    // Phases in the order of the first boot's timeline.
    let names: Vec<String> = timelines[0]
        .milestones
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    let mut phases: Vec<(String, String, Vec<f64>)> = Vec::new();
    for t in &timelines {
        let kubelet = offset(t, "kubelet-start")?;
        let modules = offset(t, "modules")? - offset(t, "mounts")?;
        let mounts = offset(t, "mounts")?;
        let crio_wait = offset(t, "crio-socket")? - offset(t, "crio-start")?;
        kernel_to_init.push(t.init_start);
        init_to_kubelet.push(kubelet);
        kernel_to_kubelet.push(t.init_start + kubelet);
        own.push(kubelet - crio_wait - modules - mounts);
        let mut previous = ("init start".to_string(), 0.0);
        for name in &names {
            let at = offset(t, name)?;
            match phases.iter_mut().find(|(n, _, _)| n == name) {
                Some((_, _, samples)) => samples.push(at - previous.1),
                None => phases.push((name.clone(), previous.0.clone(), vec![at - previous.1])),
            }
            previous = (name.clone(), at);
        }
    }
    let mut figures = vec![Figure::new(
        "boot",
        format!("vm: kernel start to init start (printk of the exec of /init) [{accel}]"),
        "ms",
    )
    .samples(kernel_to_init)];
    for (name, from, samples) in phases {
        figures.push(
            Figure::new(
                "boot",
                format!("vm: init phase {name} (from {from}) [{accel}]"),
                "ms",
            )
            .samples(samples),
        );
    }
    figures.extend([
        Figure::new(
            "boot",
            format!("vm: init start to kubelet exec [{accel}]"),
            "ms",
        )
        .samples(init_to_kubelet),
        Figure::new(
            "boot",
            format!("vm: kernel start to kubelet exec [{accel}]"),
            "ms",
        )
        .samples(kernel_to_kubelet),
        Figure::new(
            "boot",
            format!(
                "vm: init start to kubelet exec excluding the wait for cri-o, beyond modules and mounts [{accel}]"
            ),
            "ms",
        )
        .samples(own),
    ]);
    Ok(figures)
}
