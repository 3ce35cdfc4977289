//! The committed mini models are reproducible from their recipes: for every model under
//! `models/`, its directory name is the hash of its `recipe.json`, and retraining that recipe for
//! its first steps gives the committed loss trace (`trace.tsv`, written by the training that
//! produced the committed weights) to the bit — same data order, same initialisation, same
//! dropout masks, same arithmetic — when the convolution runs on the kernels that trained them
//! (im2col + gemm, `--conv-kernels gemm`) on a CPU whose gemm sums in the same depth blocks
//! (`diffuq_linalg::conv::gemm_f32_depth_block`: 512 terms, as on the Zen 4 that trained them).
//! On the faster AVX-512 kernels (the default where the CPU has them), or where gemm blocks its
//! sums otherwise (1,024 terms on Zen 5), the sums are taken in another order, so the replay
//! agrees to a stated tolerance instead: a retraining there gives a model equal in recipe, not in
//! bits.
//! `diffuq train mini-model --force` regenerates the whole model.
//!
//! Expected numbers: the committed trace itself (diffuq's own training on this CPU kind, 2
//! threads); nothing is computed in this file but the comparison.

use std::path::Path;

use candle_core::Device;
use candle_nn::VarMap;
use diffuq::model::cache::recipe_key;
use diffuq::model::recipe::{self, ImageModelRecipe};
use diffuq::model::trainer::{self, StepContext, TraceRow};
use diffuq::seed::SeedStreams;
use diffuq_linalg::conv::{gemm_f32_depth_block, set_conv_kernels, ConvKernels};

/// Steps replayed per model.
const STEPS: usize = 3;

/// gemm's depth block on the CPU that trained the committed models (AMD Zen 4, L1d 32 KiB 8-way;
/// the block decides the order of gemm's sums, hence its bits).
const TRAINED_DEPTH_BLOCK: usize = 512;

/// Relative agreement of the replayed loss and gradient norm on the AVX-512 kernels: three steps
/// of f32 sums in a different order (measured: ≤ 1.4e-7 relative here, 2026-11-30; 1e-4 leaves room for other
/// CPUs without hiding a wrong gradient, which moves these numbers by far more).
const KERNEL_TOLERANCE: f64 = 1e-4;

#[test]
fn committed_models_replay_their_first_training_steps() {
    // One test (one process): the kernel choice is process-wide.
    set_conv_kernels(ConvKernels::Gemm);
    let same_blocks = gemm_f32_depth_block() == TRAINED_DEPTH_BLOCK;
    if !same_blocks {
        eprintln!(
            "gemm sums in blocks of {} terms here, {TRAINED_DEPTH_BLOCK} where the models were \
             trained: the gemm replay is checked to the tolerance, not to the bit",
            gemm_f32_depth_block()
        );
    }
    replay("gemm kernels", same_blocks);
    set_conv_kernels(ConvKernels::Auto);
    replay("default kernels", false);
}

fn replay(kernels: &str, bitwise: bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).expect("models/ holds the committed mini models") {
        let dir = entry.unwrap().path();
        let text = std::fs::read_to_string(dir.join("recipe.json")).unwrap();
        let recipe: ImageModelRecipe = serde_json::from_str(&text).unwrap();
        let key = recipe_key(&recipe).unwrap();
        assert_eq!(
            dir.file_name().unwrap().to_string_lossy(),
            key,
            "directory name is the recipe hash"
        );
        let committed = trainer::read_trace(&dir).unwrap();
        assert_eq!(
            committed.len(),
            recipe.train.steps,
            "the trace covers the whole training"
        );

        let dev = Device::Cpu;
        let data_dir = recipe::fashion_mnist_or_fetch(None).unwrap();
        let (data, labels) = recipe::training_data(&recipe.data, &data_dir, &dev).unwrap();
        let varmap = VarMap::new();
        let net = recipe::init_network(&recipe, &varmap, &dev).unwrap();
        let schedule = recipe.schedule.build();
        let streams = SeedStreams::new(recipe.seed);
        let mut objective = |ctx: &StepContext| {
            if ctx.step == STEPS {
                // Stop the replay here; the rows so far are what is compared.
                return Err(diffuq::Error::invalid("replay", "stopped"));
            }
            recipe::step_loss(&recipe, &net, &data, &labels, &schedule, &streams, ctx)
        };
        let mut rows: Vec<TraceRow> = vec![];
        let ckpt = tempfile::tempdir().unwrap();
        let stopped = trainer::train(
            &varmap,
            &recipe.train,
            &streams,
            ckpt.path(),
            &mut objective,
            |r| rows.push(*r),
        );
        assert!(stopped.is_err());
        assert_eq!(rows.len(), STEPS);
        for (got, want) in rows.iter().zip(&committed) {
            let msg = format!(
                "{}: step {}: replayed loss {} / grad norm {}, committed {} / {}",
                kernels, got.step, got.loss, got.grad_norm, want.loss, want.grad_norm
            );
            assert_eq!(
                (got.step, got.lr.to_bits()),
                (want.step, want.lr.to_bits()),
                "{msg}"
            );
            if bitwise {
                assert_eq!(
                    (got.loss.to_bits(), got.grad_norm.to_bits()),
                    (want.loss.to_bits(), want.grad_norm.to_bits()),
                    "{msg}"
                );
            } else {
                for (a, b) in [(got.loss, want.loss), (got.grad_norm, want.grad_norm)] {
                    let rel = ((a - b) / b).abs();
                    eprintln!("{msg}: relative difference {rel:e}");
                    assert!(
                        rel <= KERNEL_TOLERANCE,
                        "{msg}: relative difference {rel:e}"
                    );
                }
            }
        }
        checked += 1;
    }
    assert!(checked >= 1, "no committed model under {}", root.display());
}
