//! The pod benchmark (scripts/bench-pods.sh runs it where /dev/kvm boots Linux, or in the
//! test host): one containerd with its CRI plugin and two runtime handlers, husk (shim v2,
//! one microVM per pod) and runc, driven as the kubelet drives them.
//!
//! Per round and handler: pod ready (RunPodSandbox + CreateContainer + StartContainer of
//! one busybox container, until the CRI reports it running), then, after the pod has sat
//! idle, the memory of every host process of the pod (the shim and all it started: for
//! husk the sandbox process holding the VM and its guest memory) as the sum of their PSS.
//! Prints a table with medians and ratios (husk / runc; husk's memory against the ~125 MiB
//! per pod Kata Containers publishes) and writes JSON.
//!
//!   husk-pod-bench --bin-dir DIR --images DIR --out FILE [--rounds N] [--idle SECONDS]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_cri::{cri, kubelet, Containerd, Cri};

/// Kata Containers' published memory overhead of one pod, MiB.
const KATA_POD_MIB: f64 = 125.0;

struct Args {
    bin_dir: PathBuf,
    images: PathBuf,
    out: PathBuf,
    rounds: usize,
    idle: u64,
}

fn args() -> Result<Args> {
    let mut a = Args {
        bin_dir: PathBuf::new(),
        images: PathBuf::new(),
        out: PathBuf::from("pods.json"),
        rounds: 3,
        idle: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--bin-dir" => a.bin_dir = v()?.into(),
            "--images" => a.images = v()?.into(),
            "--out" => a.out = v()?.into(),
            "--rounds" => a.rounds = v()?.parse().context("--rounds")?,
            "--idle" => a.idle = v()?.parse().context("--idle")?,
            _ => bail!(
                "usage: husk-pod-bench --bin-dir DIR --images DIR --out FILE [--rounds N] [--idle S]"
            ),
        }
    }
    if a.bin_dir.as_os_str().is_empty() || a.images.as_os_str().is_empty() || a.rounds == 0 {
        bail!("--bin-dir and --images are required, --rounds at least 1");
    }
    Ok(a)
}

/// What one pod took.
struct Sample {
    ready_ms: f64,
    pss_kib: u64,
    processes: usize,
}

/// The pid of the shim serving pod `id` (its command line names the id).
fn shim_of(id: &str) -> Result<i32> {
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        let is_shim = args
            .first()
            .is_some_and(|a| String::from_utf8_lossy(a).contains("containerd-shim"));
        if is_shim
            && args
                .windows(2)
                .any(|w| w[0] == b"-id" && w[1] == id.as_bytes())
        {
            return Ok(pid);
        }
    }
    bail!("no shim for pod {id}")
}

/// `pid` and all its descendants.
fn tree(pid: i32) -> Vec<i32> {
    let mut parent_of: Vec<(i32, i32)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The fields after the command name (which may hold spaces) in its parentheses.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|v| v.parse().ok()) {
            parent_of.push((p, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found
}

/// The summed PSS of `pids`, KiB (`/proc/<pid>/smaps_rollup`).
fn pss_kib(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
        .filter_map(|t| {
            t.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

fn one_pod(cri: &mut Cri, handler: &str, name: &str, logs: &Path, idle: u64) -> Result<Sample> {
    let config = kubelet::pod_config(name, "bench", logs);
    kubelet::make_pod_cgroup(&config)?;
    let started = Instant::now();
    let pod = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })?
        .pod_sandbox_id;
    let result = (|| {
        let id = cri
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(kubelet::container_config("app", 0, &["sleep", "100000"])),
                sandbox_config: Some(config.clone()),
            })?
            .container_id;
        cri.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })?;
        let state = cri
            .container_status(cri::ContainerStatusRequest {
                container_id: id,
                verbose: false,
            })?
            .status
            .map(|s| s.state);
        if state != Some(cri::ContainerState::ContainerRunning as i32) {
            bail!("the container is not running after StartContainer: {state:?}");
        }
        let ready_ms = started.elapsed().as_secs_f64() * 1000.0;
        std::thread::sleep(Duration::from_secs(idle));
        let pids = tree(shim_of(&pod)?);
        Ok(Sample {
            ready_ms,
            pss_kib: pss_kib(&pids),
            processes: pids.len(),
        })
    })();
    let stopped = cri
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .and_then(|_| {
            cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
        });
    let sample = result.with_context(|| format!("pod {name} ({handler})"))?;
    stopped.with_context(|| format!("removing pod {name} ({handler})"))?;
    kubelet::remove_pod_cgroups().with_context(|| format!("after pod {name} ({handler})"))?;
    Ok(sample)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    let a = args()?;
    let handlers = husk_cri::deploy_handlers()?;
    let c = Containerd::start(
        Path::new("/run/husk-pod-bench"),
        &a.bin_dir,
        &a.images,
        &handlers,
    )?;
    let mut cri = c.cri()?;
    let logs = c.dir.join("logs");
    let mut results = serde_json::Map::new();
    let mut table = Vec::new();
    for handler in ["husk", "runc"] {
        let mut samples = Vec::new();
        for round in 0..a.rounds {
            let s = one_pod(
                &mut cri,
                handler,
                &format!("{handler}-{round}"),
                &logs,
                a.idle,
            )
            .with_context(|| c.log_tail())?;
            eprintln!(
                "pod-bench: {handler} round {}: ready {:.0} ms, {} processes, PSS {:.1} MiB",
                round + 1,
                s.ready_ms,
                s.processes,
                s.pss_kib as f64 / 1024.0
            );
            samples.push(s);
        }
        let ready = median(samples.iter().map(|s| s.ready_ms).collect());
        let pss = median(samples.iter().map(|s| s.pss_kib as f64 / 1024.0).collect());
        results.insert(
            handler.into(),
            serde_json::json!({
                "ready_ms": samples.iter().map(|s| s.ready_ms).collect::<Vec<_>>(),
                "pss_mib": samples.iter().map(|s| s.pss_kib as f64 / 1024.0).collect::<Vec<_>>(),
                "processes": samples.iter().map(|s| s.processes).collect::<Vec<_>>(),
                "ready_ms_median": ready,
                "pss_mib_median": pss,
            }),
        );
        table.push((handler, ready, pss));
    }
    let (_, husk_ready, husk_pss) = table[0];
    let (_, runc_ready, runc_pss) = table[1];
    println!(
        "pod benchmark ({} rounds, {} s idle before the memory reading)",
        a.rounds, a.idle
    );
    println!("| | husk (shim v2, microVM) | runc | husk / runc |");
    println!("|---|---|---|---|");
    println!(
        "| pod ready (run pod + create + start) | {husk_ready:.0} ms | {runc_ready:.0} ms | {:.2} |",
        husk_ready / runc_ready
    );
    println!(
        "| idle pod, PSS of its host processes | {husk_pss:.1} MiB | {runc_pss:.1} MiB | {:.2} |",
        husk_pss / runc_pss
    );
    println!(
        "husk's idle pod against Kata's published ~{KATA_POD_MIB:.0} MiB: {:.2}",
        husk_pss / KATA_POD_MIB
    );
    results.insert("kata_pod_mib".into(), KATA_POD_MIB.into());
    results.insert("rounds".into(), a.rounds.into());
    std::fs::write(&a.out, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", a.out.display()))?;
    Ok(())
}
