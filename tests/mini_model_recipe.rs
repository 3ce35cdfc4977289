//! The committed mini models are reproducible from their recipes: for every model under
//! `models/`, its directory name is the hash of its `recipe.json`, and retraining that recipe for
//! its first steps gives the committed loss trace (`trace.tsv`, written by the training that
//! produced the committed weights) to the bit — same data order, same initialisation, same
//! dropout masks, same arithmetic. `diffuq train mini-model --force` regenerates the whole model.
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

/// Steps replayed per model.
const STEPS: usize = 3;

#[test]
fn committed_models_replay_their_first_training_steps_bit_for_bit() {
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
            assert_eq!(
                (
                    got.step,
                    got.loss.to_bits(),
                    got.grad_norm.to_bits(),
                    got.lr.to_bits()
                ),
                (
                    want.step,
                    want.loss.to_bits(),
                    want.grad_norm.to_bits(),
                    want.lr.to_bits()
                ),
                "step {}: replayed loss {} / grad norm {}, committed {} / {}",
                got.step,
                got.loss,
                got.grad_norm,
                want.loss,
                want.grad_norm
            );
        }
        checked += 1;
    }
    assert!(checked >= 1, "no committed model under {}", root.display());
}
