//! `diffuq slurm`: an artifact as a Slurm job array of shards plus a merge job.
//!
//! At paper scale one artifact is minutes to an hour of one GPU and a full table is GPU-days, so
//! reviewers run it on a cluster. The run's parts (seeds) already split into disjoint shards
//! (`diffuq run --shard i/n`) that `diffuq merge` joins into exactly what one run writes; this
//! module writes the two sbatch scripts that do that on Slurm:
//!
//! - `array.sbatch`: `#SBATCH --array=0-(n-1)`, task `i` runs `diffuq run … --shard i/n`. Tasks
//!   are `--requeue`able: a requeued (or resubmitted) task finds its shard directory and resumes
//!   from the parts it finished, as any interrupted run does.
//! - `merge.sbatch`: `diffuq merge <run-dir>`, submitted with `--dependency=afterok:<array id>`
//!   so it starts only when every task succeeded.
//!
//! Both scripts call this binary by absolute path with absolute experiment and run directories,
//! and export the `DIFFUQ_*` variables that were set when they were written: the configuration
//! (and so the run directory) is the one `diffuq validate` shows now, whatever shell later
//! submits them. Cluster nodes must see the same paths (a shared file system), as for any job.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// Resource requests passed through to `#SBATCH` lines (unset ones are left to the cluster's
/// defaults).
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub gres: Option<String>,
    pub time: Option<String>,
    pub cpus_per_task: Option<u32>,
    pub mem: Option<String>,
    /// Further `#SBATCH` options, verbatim (e.g. `--qos=high`).
    pub extra: Vec<String>,
}

/// Everything the two scripts need.
#[derive(Debug, Clone)]
pub struct Job {
    pub artifact: String,
    pub scale: String,
    pub overrides: Vec<String>,
    /// `DIFFUQ_*` variables to export (they are configuration).
    pub env: Vec<(String, String)>,
    pub shards: usize,
    /// `--device` of the runs (cpu, cuda, cuda:N).
    pub device: String,
    pub exe: PathBuf,
    pub experiments_dir: PathBuf,
    pub runs_dir: PathBuf,
    /// The run directory every shard and the merge write to.
    pub run_dir: PathBuf,
    pub resources: Resources,
    /// `--conv-kernels gemm` when the submitting command had it (every task computes with the
    /// same kernels; `auto` is the default and is not written).
    pub conv_gemm: bool,
}

/// The two scripts, written.
#[derive(Debug, Clone)]
pub struct Scripts {
    pub array: PathBuf,
    pub merge: PathBuf,
}

/// POSIX shell single-quoting: every byte literal.
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn q(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// A value that goes on an `#SBATCH` line: Slurm reads these lines itself (no shell), so they
/// must be one token without whitespace or a comment character.
fn sbatch_value(key: &str, v: &str) -> Result<String> {
    if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err(Error::invalid(
            format!("--{key} {v:?}"),
            "expected one word without spaces or '#' (it becomes an #SBATCH line)",
        ));
    }
    Ok(v.to_string())
}

impl Job {
    fn header(&self, name: &str, output: &Path) -> Result<String> {
        let r = &self.resources;
        let mut lines = vec![
            "#!/bin/bash".to_string(),
            format!(
                "# Written by `diffuq slurm` (diffuq {}): {} at scale {}, {} shard(s).",
                env!("CARGO_PKG_VERSION"),
                self.artifact,
                self.scale,
                self.shards
            ),
            format!("#SBATCH --job-name={}", sbatch_value("job-name", name)?),
            format!(
                "#SBATCH --output={}",
                sbatch_value("output", &output.to_string_lossy())?
            ),
            "#SBATCH --open-mode=append".to_string(),
        ];
        let mut opt = |key: &str, v: &Option<String>| -> Result<()> {
            if let Some(v) = v {
                lines.push(format!("#SBATCH --{key}={}", sbatch_value(key, v)?));
            }
            Ok(())
        };
        opt("partition", &r.partition)?;
        opt("account", &r.account)?;
        opt("gres", &r.gres)?;
        opt("time", &r.time)?;
        opt("mem", &r.mem)?;
        opt("cpus-per-task", &r.cpus_per_task.map(|c| c.to_string()))?;
        for e in &r.extra {
            let e = sbatch_value("sbatch", e)?;
            if !e.starts_with('-') {
                return Err(Error::invalid(
                    format!("--sbatch {e:?}"),
                    "expected an sbatch option such as --qos=high",
                ));
            }
            lines.push(format!("#SBATCH {e}"));
        }
        Ok(lines.join("\n"))
    }

    /// `set -euo pipefail`, the exports and the `cd` both scripts share.
    fn prelude(&self) -> String {
        let mut s = String::from("set -euo pipefail\n");
        for (k, v) in &self.env {
            s.push_str(&format!("export {}={}\n", k, quote(v)));
        }
        s
    }

    fn base_args(&self) -> String {
        format!(
            "{} --experiments {} --runs-dir {}{}",
            q(&self.exe),
            q(&self.experiments_dir),
            q(&self.runs_dir),
            if self.conv_gemm {
                " --conv-kernels gemm"
            } else {
                ""
            }
        )
    }

    /// The array script: task `i` computes shard `i` of `n`.
    pub fn array_script(&self, dir: &Path) -> Result<String> {
        let mut s = self.header(
            &format!("diffuq-{}", self.artifact),
            &dir.join("shard-%a.out"),
        )?;
        s.push_str(&format!(
            "\n#SBATCH --array=0-{}\n#SBATCH --requeue\n",
            self.shards - 1
        ));
        s.push_str(
            "# A requeued or resubmitted task resumes from the parts its shard already finished.\n",
        );
        s.push_str(&self.prelude());
        let mut cmd = format!(
            "exec {} run {} --scale {} --device {} --shard \"${{SLURM_ARRAY_TASK_ID}}/{}\"",
            self.base_args(),
            quote(&self.artifact),
            quote(&self.scale),
            quote(&self.device),
            self.shards
        );
        for o in &self.overrides {
            cmd.push(' ');
            cmd.push_str(&quote(o));
        }
        s.push_str(&cmd);
        s.push('\n');
        Ok(s)
    }

    /// The merge script: joins the shards (run it after every array task succeeded).
    pub fn merge_script(&self, dir: &Path) -> Result<String> {
        let mut s = self.header(
            &format!("diffuq-{}-merge", self.artifact),
            &dir.join("merge.out"),
        )?;
        s.push_str("\n# Exit 0: reproduced or not checked; 1: not reproduced; 2: error (`diffuq --help`).\n");
        s.push_str(&self.prelude());
        s.push_str(&format!(
            "exec {} merge {} --device {}\n",
            self.base_args(),
            q(&self.run_dir),
            quote(&self.device)
        ));
        Ok(s)
    }

    /// Write both scripts into `dir` (created; executable).
    pub fn write(&self, dir: &Path) -> Result<Scripts> {
        if self.shards == 0 {
            return Err(Error::invalid("--shards 0", "expected at least 1 shard"));
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let scripts = Scripts {
            array: dir.join("array.sbatch"),
            merge: dir.join("merge.sbatch"),
        };
        for (path, text) in [
            (&scripts.array, self.array_script(dir)?),
            (&scripts.merge, self.merge_script(dir)?),
        ] {
            std::fs::write(path, text).map_err(io(path))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                    .map_err(io(path))?;
            }
        }
        Ok(scripts)
    }
}

/// The job id `sbatch --parsable` prints (`<id>` or `<id>;<cluster>`).
pub fn parse_job_id(stdout: &str) -> Option<String> {
    let id = stdout.trim().split(';').next()?.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then(|| id.to_string())
}

/// Submit the array, then the merge with `--dependency=afterok:<array id>`; returns both ids.
/// `sbatch` is taken from `PATH` (`DIFFUQ_*` variables are configuration keys, so none names it).
pub fn submit(scripts: &Scripts) -> Result<(String, String)> {
    let sbatch = "sbatch";
    let call = |args: &[&str], script: &Path| -> Result<String> {
        let what = format!("{sbatch} {} {}", args.join(" "), script.display());
        let out = Command::new(sbatch)
            .args(args)
            .arg(script)
            .output()
            .map_err(|e| Error::invalid(&what, format!("cannot start sbatch: {e}")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(Error::invalid(
                &what,
                format!("sbatch failed ({}): {}", out.status, err.trim()),
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        parse_job_id(&stdout).ok_or_else(|| {
            Error::invalid(
                &what,
                format!("expected a job id from --parsable, got {:?}", stdout.trim()),
            )
        })
    };
    let array = call(&["--parsable"], &scripts.array)?;
    let dep = format!("--dependency=afterok:{array}");
    let merge = call(&["--parsable", &dep], &scripts.merge)?;
    Ok((array, merge))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            artifact: "gu-fig3".into(),
            scale: "paper".into(),
            overrides: vec!["seeds=[0, 1]".into(), "uq.m=5".into()],
            env: vec![("DIFFUQ_TRAIN__STEPS".into(), "it's".into())],
            shards: 4,
            device: "cuda".into(),
            exe: "/opt/diffuq/bin/diffuq".into(),
            experiments_dir: "/home/r/diffuq/experiments".into(),
            runs_dir: "/scratch/r/runs".into(),
            run_dir: "/scratch/r/runs/gu-fig3/paper/0123456789abcdef".into(),
            resources: Resources {
                partition: Some("gpu".into()),
                gres: Some("gpu:1".into()),
                time: Some("02:00:00".into()),
                extra: vec!["--qos=high".into()],
                ..Default::default()
            },
            conv_gemm: false,
        }
    }

    #[test]
    fn scripts_snapshot() {
        let j = job();
        let dir = j.run_dir.join("slurm");
        insta::assert_snapshot!("array_sbatch", j.array_script(&dir).unwrap());
        insta::assert_snapshot!("merge_sbatch", j.merge_script(&dir).unwrap());
    }

    #[test]
    fn gemm_kernels_reach_every_task_and_the_merge() {
        // Expected: by construction, the submitting command's `--conv-kernels gemm` is on the
        // diffuq command line of both scripts, and absent (the default) otherwise.
        let dir = Path::new("/scratch/r/runs/gu-fig3/paper/0123456789abcdef/slurm");
        let mut j = job();
        for (gemm, want) in [(false, 0), (true, 1)] {
            j.conv_gemm = gemm;
            for script in [j.array_script(dir).unwrap(), j.merge_script(dir).unwrap()] {
                assert_eq!(
                    script.matches("--conv-kernels gemm").count(),
                    want,
                    "{script}"
                );
            }
        }
    }

    #[test]
    fn quoting_survives_the_shell() {
        // What bash makes of the quoted words must be the words (checked by running bash).
        let words = [
            "plain",
            "seeds=[0, 1]",
            "it's",
            "",
            "$HOME `x` \"y\"",
            "a\nb",
        ];
        let script = words
            .iter()
            .map(|w| format!("printf '%s\\0' {}", quote(w)))
            .collect::<Vec<_>>()
            .join("\n");
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        let got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split('\0')
            .map(String::from)
            .collect();
        assert_eq!(&got[..words.len()], &words.map(String::from));
    }

    #[test]
    fn bad_sbatch_values_are_one_line_errors() {
        let mut j = job();
        j.resources.partition = Some("gpu big".into());
        let e = j.array_script(Path::new("/tmp")).unwrap_err().to_string();
        assert!(e.contains("--partition \"gpu big\""), "{e}");
        let mut j = job();
        j.resources.extra = vec!["qos=high".into()];
        let e = j.merge_script(Path::new("/tmp")).unwrap_err().to_string();
        assert!(e.contains("--sbatch"), "{e}");
    }

    #[test]
    fn job_ids() {
        assert_eq!(parse_job_id("123\n").as_deref(), Some("123"));
        assert_eq!(parse_job_id("77;cluster\n").as_deref(), Some("77"));
        assert_eq!(parse_job_id("Submitted batch job 5"), None);
        assert_eq!(parse_job_id(""), None);
    }
}
