//! `diffuq slurm` on a real single-node Slurm cluster (Debian's slurm-wlm and munge), not a mock:
//! the test starts munged, slurmctld and slurmd on private ports with a private munge socket and
//! key (so it never touches a cluster the machine may already run), submits gu-fig2 at smoke
//! scale as an array of 3 shards plus the dependent merge job, waits for the queue to drain,
//! compares the merged run with the unsharded run, and stops the daemons by the pids in their pid
//! files.
//!
//! Expected values: diffuq's own unsharded run of the same configuration (seed streams make each
//! seed's numbers independent of the process computing it; tests/shard_merge_cli.rs checks the
//! same identity without Slurm).
//!
//! Needs root and the packages `slurm-wlm munge` (`.ci/run` installs them; README "Running on a
//! cluster"). Where Slurm cannot start, the test fails saying why; outside CI,
//! `DIFFUQ_SKIP_SLURM=1` skips it with a message (refused when `CI` is set).

use std::net::TcpListener;
#[allow(dead_code)]
mod common;
use common::{files_with, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const TOOLS: &[&str] = &[
    "munged",
    "mungekey",
    "slurmctld",
    "slurmd",
    "sbatch",
    "squeue",
    "sinfo",
];

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemons of one private cluster; dropping it stops them by pid.
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
    bins: std::collections::HashMap<&'static str, PathBuf>,
}

impl Cluster {
    fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(&self.bins[tool]);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn start() -> Result<Self, String> {
        let mut bins = std::collections::HashMap::new();
        let missing: Vec<&str> = TOOLS
            .iter()
            .copied()
            .filter(|t| match which(t) {
                Some(p) => {
                    bins.insert(*t, p);
                    false
                }
                None => true,
            })
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "Slurm cannot start: {} not installed (apt-get install slurm-wlm munge)",
                missing.join(", ")
            ));
        }
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| e.to_string())?;
        if text(&uid.stdout).trim() != "0" {
            return Err("Slurm cannot start: the test runs slurmd and slurmctld as root".into());
        }
        let dir = tempfile::Builder::new()
            .prefix("diffuq-slurm")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let d = dir.path().to_path_buf();
        for sub in ["state", "spool"] {
            std::fs::create_dir_all(d.join(sub)).map_err(|e| e.to_string())?;
        }
        let host = text(
            &Command::new("hostname")
                .arg("-s")
                .output()
                .map_err(|e| e.to_string())?
                .stdout,
        )
        .trim()
        .to_string();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let conf = d.join("slurm.conf");
        let sock = d.join("munge.socket");
        let p = |n: &str| d.join(n).display().to_string();
        std::fs::write(
            &conf,
            format!(
                "ClusterName=diffuqtest\nSlurmctldHost={host}\nSlurmctldPort={}\nSlurmdPort={}\n\
                 SlurmUser=root\nSlurmdUser=root\nAuthType=auth/munge\nAuthInfo=socket={}\n\
                 StateSaveLocation={}\nSlurmdSpoolDir={}\nSlurmctldPidFile={}\nSlurmdPidFile={}\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSchedulerType=sched/builtin\n\
                 SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nReturnToService=2\n\
                 SlurmctldLogFile={}\nSlurmdLogFile={}\nJobAcctGatherType=jobacct_gather/none\n\
                 NodeName={host} CPUs={cpus} RealMemory=4000 State=UNKNOWN\n\
                 PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
                free_port(),
                free_port(),
                sock.display(),
                p("state"),
                p("spool"),
                p("slurmctld.pid"),
                p("slurmd.pid"),
                p("slurmctld.log"),
                p("slurmd.log"),
            ),
        )
        .map_err(|e| e.to_string())?;
        let cluster = Cluster { dir, conf, bins };
        let run = |mut c: Command, what: &str| -> Result<(), String> {
            let out = c.output().map_err(|e| format!("{what}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "Slurm cannot start: {what} failed ({}): {}",
                    out.status,
                    text(&out.stderr).trim()
                ))
            }
        };
        let key = d.join("munge.key");
        let mut c = cluster.cmd("mungekey");
        c.arg("--create")
            .arg(format!("--keyfile={}", key.display()));
        run(c, "mungekey --create")?;
        let mut c = cluster.cmd("munged");
        c.arg("--force")
            .arg(format!("--socket={}", sock.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--pid-file={}", p("munged.pid")))
            .arg(format!("--seed-file={}", p("munged.seed")))
            .arg(format!("--log-file={}", p("munged.log")));
        run(c, "munged")?;
        run(cluster.cmd("slurmctld"), "slurmctld")?;
        run(cluster.cmd("slurmd"), "slurmd")?;
        // The node registers within seconds.
        let t0 = Instant::now();
        loop {
            let out = cluster
                .cmd("sinfo")
                .args(["-h", "-o", "%t"])
                .output()
                .map_err(|e| e.to_string())?;
            let state = text(&out.stdout);
            if state.trim() == "idle" {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "Slurm cannot start: the node is {:?} after 60 s; slurmctld.log: {}",
                    state.trim(),
                    cluster.log("slurmctld.log")
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(cluster)
    }

    fn log(&self, name: &str) -> String {
        let s = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // By pid, never by name: other clusters (or CI runs) on the machine are not ours.
        for name in ["slurmd.pid", "slurmctld.pid", "munged.pid"] {
            let Ok(pid) = std::fs::read_to_string(self.dir.path().join(name)) else {
                continue;
            };
            let pid = pid.trim().to_string();
            let _ = Command::new("kill").arg(&pid).status();
            let proc = PathBuf::from(format!("/proc/{pid}"));
            let t0 = Instant::now();
            while proc.exists() && t0.elapsed() < Duration::from_secs(10) {
                // A daemon whose parent is gone is reaped by init; a zombie child of this
                // process has status "Z" and counts as stopped.
                let status = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
                if status.split_whitespace().nth(2) == Some("Z") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn diffuq(cluster: Option<&Cluster>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diffuq"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DIFFUQ_")) {
        cmd.env_remove(k);
    }
    if let Some(c) = cluster {
        // sbatch from PATH, as for a user; this cluster's config.
        let dir = c.bins["sbatch"].parent().unwrap().to_path_buf();
        let path = std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))
        .unwrap();
        cmd.env("SLURM_CONF", &c.conf).env("PATH", path);
    }
    cmd.output().expect("spawn diffuq")
}

fn line_after<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {stdout}"))
}

#[test]
fn array_of_three_shards_and_merge_on_a_real_slurm_equal_the_single_run() {
    let cluster = match Cluster::start() {
        Ok(c) => c,
        Err(why) => {
            if std::env::var_os("DIFFUQ_SKIP_SLURM").is_some() && std::env::var_os("CI").is_none() {
                eprintln!("skipped (DIFFUQ_SKIP_SLURM): {why}");
                return;
            }
            panic!("{why}");
        }
    };

    // The single run, without Slurm.
    let single = tempfile::tempdir().unwrap();
    let args = |runs: &Path| {
        vec![
            "--runs-dir".to_string(),
            runs.display().to_string(),
            "gu-fig2".into(),
            "--scale".into(),
            "smoke".into(),
            "seeds=[0,1,2]".into(),
        ]
    };
    let mut a = vec!["run".to_string()];
    a.extend(args(single.path()));
    let out = diffuq(None, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let single_dir = PathBuf::from(line_after(&text(&out.stdout), "run directory: "));

    // The same configuration as a job array of 3 plus the merge.
    let sharded = tempfile::tempdir().unwrap();
    let mut a = vec!["slurm".to_string()];
    a.extend(args(sharded.path()));
    a.extend(["--shards", "3", "--submit", "--time", "00:10:00"].map(String::from));
    let out = diffuq(
        Some(&cluster),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let so = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{so}{}", text(&out.stderr));
    let submitted = line_after(&so, "submitted array job ");
    let ids: Vec<&str> = submitted
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect();
    let (array_id, merge_id) = (ids[0], ids[2]);
    let run_dir = PathBuf::from(line_after(&so, "run directory: "));
    assert_eq!(
        run_dir.file_name(),
        single_dir.file_name(),
        "same configuration hash"
    );

    // Wait for the queue to drain.
    let t0 = Instant::now();
    loop {
        let out = cluster
            .cmd("squeue")
            .args(["-h", "-j", &format!("{array_id},{merge_id}")])
            .output()
            .unwrap();
        if text(&out.stdout).trim().is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "jobs still queued after 10 min: {}\nslurmctld.log: {}",
            text(&out.stdout),
            cluster.log("slurmctld.log")
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Every shard ran as its own array task, and the merge ran after them.
    let slurm = run_dir.join("slurm");
    for i in 0..3 {
        let log = std::fs::read_to_string(slurm.join(format!("shard-{i}.out")))
            .unwrap_or_else(|e| panic!("shard-{i}.out: {e}"));
        assert!(
            log.contains(&format!("shard {i}/3 finished")),
            "task {i}: {log}"
        );
        assert!(run_dir
            .join(format!("shards/{i}-of-3/manifest.json"))
            .is_file());
    }
    let merge_log = std::fs::read_to_string(slurm.join("merge.out")).unwrap();
    assert!(
        merge_log.contains("outcome: not-checked"),
        "merge: {merge_log}"
    );

    // What the merge wrote is what the single run wrote.
    let frames = files_with(&single_dir, ".parquet");
    assert!(!frames.is_empty());
    assert_eq!(files_with(&run_dir, ".parquet"), frames);
    for f in &frames {
        assert_eq!(
            std::fs::read(single_dir.join(f)).unwrap(),
            std::fs::read(run_dir.join(f)).unwrap(),
            "{f} differs from the single run"
        );
    }
    assert_eq!(
        std::fs::read_to_string(single_dir.join("table.md")).unwrap(),
        std::fs::read_to_string(run_dir.join("table.md")).unwrap()
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["status"], "finished", "{m}");
    drop(cluster);
}

#[test]
fn scripts_without_submit_and_bad_options() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path().to_str().unwrap();
    let out = diffuq(
        None,
        &[
            "--runs-dir",
            r,
            "slurm",
            "gu-fig2",
            "--scale",
            "smoke",
            "--shards",
            "2",
            "--partition",
            "gpu",
            "--gres",
            "gpu:1",
            "seeds=[0,1]",
        ],
    );
    let so = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{so}{}", text(&out.stderr));
    let array = std::fs::read_to_string(line_after(&so, "array script: ")).unwrap();
    assert!(array.contains("#SBATCH --array=0-1"), "{array}");
    assert!(array.contains("#SBATCH --partition=gpu"), "{array}");
    assert!(
        array.contains("--shard \"${SLURM_ARRAY_TASK_ID}/2\""),
        "{array}"
    );
    assert!(array.contains("'seeds=[0,1]'"), "{array}");
    assert!(so.contains("sbatch --dependency=afterok:$id"), "{so}");
    // Nothing was computed.
    let run_dir = PathBuf::from(line_after(&so, "run directory: "));
    assert!(!run_dir.join("manifest.json").exists());

    // An artifact that runs whole refuses more than one shard; a bad sbatch value is one line.
    for (args, expect) in [
        (
            vec!["slurm", "mini-model", "--scale", "smoke", "--shards", "2"],
            "runs whole",
        ),
        (
            vec![
                "slurm", "gu-fig2", "--scale", "smoke", "--shards", "2", "--time", "1 h",
            ],
            "--time \"1 h\"",
        ),
    ] {
        let mut a = vec!["--runs-dir", r];
        a.extend(args);
        let out = diffuq(None, &a);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{a:?}: {err}");
        assert!(err.contains(expect), "{a:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // clap rejects zero shards (its usage message, exit 2).
    let out = diffuq(
        None,
        &["slurm", "gu-fig2", "--scale", "smoke", "--shards", "0"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--shards"));
}
