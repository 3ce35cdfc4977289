//! Where a network's parameters come from: a checkpoint's named tensors, a seeded fresh
//! initialisation, or either of them wrapped as trainable [`Var`]s in a [`VarMap`].
//!
//! Networks are written once against candle's [`VarBuilder`] (`vb.get(shape, "name")`); this
//! module supplies the backend. Loading tracks which tensors were asked for, so a checkpoint that
//! lacks a tensor, holds it at another shape, or holds tensors the architecture never uses gives
//! one line naming the tensor — the usual symptom of a config that does not match the weights.
//!
//! A fresh initialisation never uses candle's own random generator (it cannot be seeded on the
//! CPU): every tensor is drawn from the seed stream `purpose.sub(name)`, so a parameter's initial
//! value depends only on (seed, its name, its shape) and not on construction order. The
//! distributions are PyTorch's defaults for the layer kinds a diffusers network uses, so a fresh
//! diffuq network trains like a fresh diffusers one: `nn.Conv2d`/`nn.Linear` weights and biases
//! U(−1/√fan_in, 1/√fan_in) (kaiming_uniform with a = √5), `nn.GroupNorm`/`nn.LayerNorm`
//! weight 1 and bias 0, `nn.Embedding` N(0, 1).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};

use crate::error::{Error, Result};
use crate::seed::Purpose;

/// A fresh value for the tensor `name` of `shape`, by the layer kind its name implies; `fan_in`
/// is the fan-in of the layer it belongs to (a bias uses its weight's).
fn init_tensor(
    purpose: &Purpose,
    name: &str,
    shape: &Shape,
    fan_in: usize,
    dev: &Device,
) -> candle_core::Result<Tensor> {
    let n = shape.elem_count();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let parent = name.rsplit('.').nth(1).unwrap_or("");
    let values: Vec<f32> = if parent.contains("norm") {
        vec![if leaf == "weight" { 1.0 } else { 0.0 }; n]
    } else if parent == "class_embedding" && shape.dims().len() == 2 {
        // nn.Embedding: N(0, 1).
        purpose.sub(name).normals(&[0], None, n)
    } else {
        let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
        purpose.sub(name).uniforms(&[0], None, n, -bound, bound)
    };
    Tensor::from_vec(values, shape.clone(), dev)
}

/// Rename legacy diffusers attention tensors (`attentions.N.query/key/value/proj_attn`, written
/// by diffusers before 0.14 and still on the hub, e.g. google/ddpm-cifar10-32) to the current
/// A network-build error as one line naming the weight file: the parameter source's messages
/// already start with `what` (`weights <file>: …`), so that prefix is not repeated.
pub fn build_error(what: &str, e: &candle_core::Error) -> Error {
    let msg = e.to_string().lines().next().unwrap_or_default().to_string();
    match msg.strip_prefix(&format!("{what}: ")) {
        Some(rest) => Error::invalid(what, rest.to_string()),
        None => Error::invalid(what, msg),
    }
}

/// names (`to_q/to_k/to_v/to_out.0`), as diffusers' own loader does.
pub fn rename_legacy_attention(name: &str) -> String {
    if !name.contains("attentions.") {
        return name.to_string();
    }
    for (old, new) in [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ] {
        if let Some(i) = name.find(old) {
            return format!("{}{}{}", &name[..i], new, &name[i + old.len()..]);
        }
    }
    name.to_string()
}

/// The parameter backend. Build a network with [`ParamSource::var_builder`], then call
/// [`ParamSource::finish`] to check that every checkpoint tensor was used.
pub struct ParamSource {
    /// Checkpoint tensors by (current) name, when loading.
    tensors: Option<HashMap<String, Tensor>>,
    /// Seeded initialisation for tensors not in `tensors` (None: missing tensors are errors).
    init: Option<Purpose>,
    /// Where trainable parameters are registered, when training.
    varmap: Option<VarMap>,
    /// What the network asked for, name → shape.
    asked: Mutex<BTreeMap<String, Vec<usize>>>,
    /// fan_in of each layer whose weight was initialised, for its bias.
    fans: Mutex<HashMap<String, usize>>,
    /// Label for messages ("checkpoint dir/model.safetensors").
    what: String,
    /// Record names and shapes only; every tensor is a broadcast zero (no memory).
    shapes_only: bool,
}

impl ParamSource {
    /// Parameters read from named tensors (a checkpoint), frozen.
    pub fn load(tensors: Vec<(String, Tensor)>, what: impl Into<String>) -> Self {
        Self {
            tensors: Some(
                tensors
                    .into_iter()
                    .map(|(k, v)| (rename_legacy_attention(&k), v))
                    .collect(),
            ),
            init: None,
            varmap: None,
            asked: Mutex::new(BTreeMap::new()),
            fans: Mutex::new(HashMap::new()),
            what: what.into(),
            shapes_only: false,
        }
    }

    /// No values at all: every parameter is a zero broadcast to its shape (no allocation), so a
    /// network of any size can be built just to list the tensors it asks for ([`Self::asked`]);
    /// the full-size checkpoint layouts are checked this way without their weights.
    pub fn shapes_only() -> Self {
        let mut s = Self::load(Vec::new(), "shape listing");
        s.tensors = None;
        s.shapes_only = true;
        s
    }

    /// A fresh, seeded initialisation, registered as trainable variables in `varmap`.
    pub fn init(purpose: Purpose, varmap: VarMap) -> Self {
        Self {
            tensors: None,
            init: Some(purpose),
            varmap: Some(varmap),
            asked: Mutex::new(BTreeMap::new()),
            fans: Mutex::new(HashMap::new()),
            what: "fresh initialisation".into(),
            shapes_only: false,
        }
    }

    /// Checkpoint tensors registered as trainable variables (resuming or fine-tuning).
    pub fn load_trainable(
        tensors: Vec<(String, Tensor)>,
        what: impl Into<String>,
        varmap: VarMap,
    ) -> Self {
        let mut s = Self::load(tensors, what);
        s.varmap = Some(varmap);
        s
    }

    pub fn var_builder(
        self,
        dtype: DType,
        dev: &Device,
    ) -> (VarBuilder<'static>, std::sync::Arc<Self>) {
        let me = std::sync::Arc::new(self);
        let backend: Box<dyn SimpleBackend> = Box::new(Shared(me.clone()));
        (VarBuilder::from_backend(backend, dtype, dev.clone()), me)
    }

    /// After the network is built: every checkpoint tensor must have been used.
    pub fn finish(&self) -> Result<()> {
        let asked = self.asked.lock().expect("parameter registry poisoned");
        if let Some(t) = &self.tensors {
            let unused: BTreeSet<&String> = t.keys().filter(|k| !asked.contains_key(*k)).collect();
            if let Some(first) = unused.iter().next() {
                return Err(Error::invalid(
                    self.what.clone(),
                    format!(
                        "{} tensor(s) the architecture does not use, first `{first}`: does the config match the weights?",
                        unused.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Names and shapes the network asked for, in name order.
    pub fn asked(&self) -> Vec<(String, Vec<usize>)> {
        let asked = self.asked.lock().expect("parameter registry poisoned");
        asked.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

struct Shared(std::sync::Arc<ParamSource>);

impl SimpleBackend for Shared {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let me = &self.0;
        me.asked
            .lock()
            .expect("parameter registry poisoned")
            .insert(name.to_string(), s.dims().to_vec());
        if me.shapes_only {
            return Tensor::zeros((), dtype, dev)?.broadcast_as(s);
        }
        let value = match me.tensors.as_ref().and_then(|t| t.get(name)) {
            Some(t) => {
                if t.dims() != s.dims() {
                    candle_core::bail!(
                        "{}: tensor `{name}` has shape {:?}, the architecture expects {:?}",
                        me.what,
                        t.dims(),
                        s.dims()
                    );
                }
                t.to_device(dev)?.to_dtype(dtype)?
            }
            None => match &me.init {
                Some(p) => {
                    let mut fans = me.fans.lock().expect("parameter registry poisoned");
                    let fan_in = match name.strip_suffix(".bias") {
                        Some(layer) => fans.get(layer).copied().unwrap_or(s.elem_count()),
                        None => {
                            let f = s.dims().iter().skip(1).product::<usize>();
                            if let Some(layer) = name.strip_suffix(".weight") {
                                fans.insert(layer.to_string(), f);
                            }
                            f
                        }
                    };
                    init_tensor(p, name, &s, fan_in, dev)?.to_dtype(dtype)?
                }
                None => {
                    candle_core::bail!("{}: tensor `{name}` {:?} is missing", me.what, s.dims())
                }
            },
        };
        match &me.varmap {
            Some(vm) => {
                let mut data = vm.data().lock().expect("varmap poisoned");
                let var = match data.get(name) {
                    Some(v) => v.clone(),
                    None => {
                        let v = Var::from_tensor(&value)?;
                        data.insert(name.to_string(), v.clone());
                        v
                    }
                };
                Ok(var.as_tensor().clone())
            }
            None => Ok(value),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.0.tensors.as_ref().and_then(|t| t.get(name)) {
            Some(t) => t.to_device(dev)?.to_dtype(dtype),
            None => candle_core::bail!("{}: tensor `{name}` is missing", self.0.what),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0
            .tensors
            .as_ref()
            .is_some_and(|t| t.contains_key(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_attention_names_map_to_current_ones() {
        // Names as diffusers' legacy AttentionBlock wrote them (query/key/value/proj_attn).
        assert_eq!(
            rename_legacy_attention("down_blocks.1.attentions.0.query.weight"),
            "down_blocks.1.attentions.0.to_q.weight"
        );
        assert_eq!(
            rename_legacy_attention("mid_block.attentions.0.proj_attn.bias"),
            "mid_block.attentions.0.to_out.0.bias"
        );
        assert_eq!(
            rename_legacy_attention("mid_block.attentions.0.group_norm.weight"),
            "mid_block.attentions.0.group_norm.weight"
        );
        assert_eq!(rename_legacy_attention("conv_in.weight"), "conv_in.weight");
    }
}
