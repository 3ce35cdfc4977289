"""Golden KL-f8 autoencoders (Stable Diffusion's VAE, as latent diffusion models decode their
latents, image = decode(z / scale_factor), and encode training images, z = scale_factor *
posterior sample), written by the reference code itself, for diffuq's src/model/vae.rs
(tests/vae_golden.rs).

Two references, both imported unchanged:

  baofff/U-ViT @ ce551708dc9cde9818d2af7d84dfadfeb7bd9034 (2023-03-25; libs/autoencoder.py last
      changed in 2a8685fe, 2022-11-18): libs/autoencoder.py, LDM's AutoencoderKL as U-ViT ships it
      (Encoder, Decoder, FrozenAutoencoderKL: decode(z) = decoder(post_quant_conv(z / scale_factor)),
      encode_moments(x) = quant_conv(encoder(x)), sample(moments) = scale_factor * (mean +
      exp(clamp(logvar, -30, 20) / 2) * randn_like(mean)), encode = sample(encode_moments);
      get_model's SD ddconfig). Read out of a git clone or bare mirror at the pinned commit into a
      temporary package `libs` (with the repository's own libs/__init__.py); needs einops.
  diffusers 0.31.0 AutoencoderKL (installed package).

LDM-naming checkpoints are made by building the reference Encoder and Decoder (and the two 1x1
convolutions quant_conv / post_quant_conv FrozenAutoencoderKL adds) under a fixed torch.manual_seed,
adding 0.1 * randn to every GroupNorm weight and bias (seeded generator; LDM has no zero-initialised
layer), and torch.save-ing the state dict. The reference output then comes from U-ViT's own
FrozenAutoencoderKL(ddconfig, embed_dim, path): its constructor loads the file and asserts that no
key is missing or unexpected, so the file is in the format U-ViT's autoencoder_kl_ema.pth is read
in. The diffusers checkpoint is AutoencoderKL(**config) (seeded, GroupNorm affines perturbed the
same way) written with save_pretrained (config.json + diffusion_pytorch_model.safetensors); its
reference output is AutoencoderKL.from_pretrained(dir).decode(z / config.scaling_factor).sample, as
diffusers pipelines decode latents, and encode(x).latent_dist (mean, sample(generator)) times
config.scaling_factor, as pipelines encode images.

Encoding: the reference draws the posterior's normals itself (U-ViT: torch.randn_like under the
global seed; diffusers: randn_tensor with a generator); the same draw is repeated with the same
seed to give eps, and the script asserts that the reference's sample equals scale_factor * (mean +
std * eps) computed from the reference's own moments, so eps is exactly the noise it used.

Cases (golden/vae/<case>/):
  ldm_tiny/        U-ViT layout: autoencoder_kl.pth (encoder.*, decoder.*, quant_conv.*,
                   post_quant_conv.*) + config.json (the ddconfig keys, embed_dim, scale_factor).
                   ch 32, ch_mult [2, 1] (the 64-channel level up.0 holds the 1x1 nin_shortcut),
                   num_res_blocks 1, attn_resolutions [8] at resolution 16 (one AttnBlock in up.1
                   besides the middle one), z_channels = embed_dim = 4, scale_factor 0.18215.
  sd_ckpt_tiny/    Stable Diffusion .ckpt layout: model.ckpt = torch.save({"state_dict": {
                   "first_stage_model." + k: v for the VAE, plus one tensor each under
                   model.diffusion_model. and cond_stage_model.}, "global_step": 0}) + config.json.
                   ch 32, ch_mult [1, 1], num_res_blocks 2 (SD's), attn_resolutions [].
                   Reference: FrozenAutoencoderKL loading the same VAE state dict unprefixed.
  diffusers_tiny/  diffusers layout: config.json + diffusion_pytorch_model.safetensors from
                   save_pretrained. block_out_channels (64, 32) (up_blocks.0 is the 32-channel
                   level, up_blocks.1 the 64-channel one with the 1x1 conv_shortcut: the reversed
                   block order), layers_per_block 1, latent_channels 4, scaling_factor 0.13025
                   (not the default, so that the config value is what is divided by).
  Each io.safetensors: z        (2, 4, 6, 8) float32, standard normal (seeded generator): a
                                *scaled* latent, as a diffusion model samples it (non-square, so
                                that H and W cannot be swapped unnoticed)
                       image    (2, 3, 12, 16) float32: the reference decode of z (two levels,
                                one nearest x2 upsampling; no clamp)
                       image_f64 the same with the model .double() and z as float64
                       x        (2, 3, 12, 16) float32, uniform in [-1, 1] (seeded generator):
                                images to encode
                       z_mean   (2, 4, 6, 8) float32: scale_factor * the reference posterior mean
                                of x (U-ViT: chunk(encode_moments(x), 2)[0]; diffusers:
                                encode(x).latent_dist.mean)
                       z_mean_f64 the same with the model .double() and x as float64
                       eps      (2, 4, 6, 8) float32: the standard normals the reference sample
                                drew (see above)
                       z_sample (2, 4, 6, 8) float32: the reference's scaled posterior sample
                                (U-ViT: FrozenAutoencoderKL.encode(x); diffusers:
                                encode(x).latent_dist.sample(generator) * scaling_factor).
  sd_kl_f8_shapes.json  U-ViT's get_model ddconfig (SD's: ch 128, ch_mult [1, 2, 4, 4],
                   num_res_blocks 2, attn_resolutions [], z_channels 4) with embed_dim 4: the
                   reference Decoder and post_quant_conv built on the meta device; the parameter
                   count and every ["decoder." / "post_quant_conv." name, shape] in order; and
                   under encoder_num_parameters / encoder_tensors the same for the reference
                   Encoder and quant_conv ("encoder." / "quant_conv." names).
  sd_kl_f8_diffusers_shapes.json  the same network as diffusers' AutoencoderKL with SD's
                   config (block_out_channels [128, 256, 512, 512], layers_per_block 2, 4 x
                   Down/UpDecoderBlock2D), on the meta device: its decoder.* and post_quant_conv.*
                   names and shapes, and (encoder_*) its encoder.* and quant_conv.* ones.

Pinned: Python 3.11.7, torch 2.15.0 (CPU, one thread), diffusers 0.31.0, einops 0.8.2,
numpy 1.26.4, safetensors 0.8.0.
Run (from the repository root; a clone or a bare mirror both work):
  git clone https://github.com/baofff/U-ViT /tmp/U-ViT
  python golden/vae_reference.py /tmp/U-ViT
"""
import contextlib
import importlib
import io as _io
import json
import os
import shutil
import subprocess
import sys
import tempfile

import diffusers
import einops
import numpy
import safetensors
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

COMMIT = "ce551708dc9cde9818d2af7d84dfadfeb7bd9034"
OUT = "golden/vae"
Z_SHAPE = (2, 4, 6, 8)

if len(sys.argv) != 2:
    sys.exit(f"usage: python {sys.argv[0]} /path/to/U-ViT-clone")
repo = sys.argv[1]
torch.set_num_threads(1)
print("python", sys.version.split()[0], "torch", torch.__version__, "diffusers", diffusers.__version__,
      "einops", einops.__version__, "numpy", numpy.__version__, "safetensors", safetensors.__version__)

tmp = tempfile.mkdtemp(prefix="diffuq-vae-ref-")
os.makedirs(os.path.join(tmp, "libs"))
for f in ["libs/__init__.py", "libs/autoencoder.py"]:
    src = subprocess.run(["git", "-C", repo, "show", f"{COMMIT}:{f}"], check=True,
                         capture_output=True).stdout
    with open(os.path.join(tmp, f), "wb") as fh:
        fh.write(src)
sys.path.insert(0, tmp)
ae = importlib.import_module("libs.autoencoder")


def quiet(fn, *a, **k):
    """The reference prints a line per attention block and per model; keep the log short."""
    with contextlib.redirect_stdout(_io.StringIO()):
        return fn(*a, **k)


def perturb_norms(model, g):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                assert m.num_groups == 32 and m.eps == 1e-6 and m.affine
                m.weight.add_(0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=g))


def ldm_state_dict(ddconfig, embed_dim, seed):
    """encoder/decoder/quant_conv/post_quant_conv as FrozenAutoencoderKL holds them."""
    torch.manual_seed(seed)
    m = torch.nn.Module()
    m.encoder = quiet(ae.Encoder, **ddconfig)
    m.decoder = quiet(ae.Decoder, **ddconfig)
    m.quant_conv = torch.nn.Conv2d(2 * ddconfig["z_channels"], 2 * embed_dim, 1)
    m.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
    perturb_norms(m, torch.Generator().manual_seed(seed + 1))
    return {k: v.contiguous() for k, v in m.state_dict().items()}


def z_for(seed):
    return torch.randn(*Z_SHAPE, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float32)


def write_case(name, files, io, cfg):
    d = os.path.join(OUT, name)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
        f.write("\n")
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(d, "io.safetensors"),
              metadata={"made_by": f"golden/vae_reference.py, U-ViT {COMMIT[:8]}, diffusers "
                                   f"{diffusers.__version__}, torch {torch.__version__}"})
    img, img64 = io["image"], io["image_f64"]
    rel = ((img64 - img.double()).abs().max() / img64.abs().max()).item()
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: {files}, z {tuple(io['z'].shape)} -> image {tuple(img.shape)}, |image| max "
          f"{img.abs().max():.4f}, f32 vs f64 max rel {rel:.2e}, {size / 1e6:.2f} MB")
    print(f"  encode: x {tuple(io['x'].shape)} -> z_mean {tuple(io['z_mean'].shape)}, |z_mean| max "
          f"{io['z_mean'].abs().max():.4f}, f32 vs f64 max rel {enc_rel(io):.2e}, |z_sample - z_mean| max "
          f"{(io['z_sample'] - io['z_mean']).abs().max():.4f}")


def enc_rel(io):
    m, m64 = io["z_mean"], io["z_mean_f64"]
    return ((m64 - m.double()).abs().max() / m64.abs().max()).item()


def x_for(seed):
    g = torch.Generator().manual_seed(seed + 4)
    return 2 * torch.rand(Z_SHAPE[0], 3, 2 * Z_SHAPE[2], 2 * Z_SHAPE[3], generator=g) - 1


def check_eps(mean, std, eps, sf, z_sample):
    """The reference's sample is scale_factor * (mean + std * eps) for the eps recorded."""
    assert torch.allclose(z_sample, sf * (mean + std * eps), rtol=1e-6, atol=1e-6)


def ldm_reference(path, ddconfig, embed_dim, scale_factor, z, x, seed):
    """U-ViT's FrozenAutoencoderKL reading `path` (it asserts no missing/unexpected keys)."""
    model = quiet(ae.FrozenAutoencoderKL, ddconfig, embed_dim, path, scale_factor)
    with torch.no_grad():
        image = model.decode(z)
        mean, logvar = torch.chunk(model.encode_moments(x), 2, dim=1)
        torch.manual_seed(seed + 5)
        z_sample = model.encode(x)  # sample(): randn_like(mean) under the global seed
        torch.manual_seed(seed + 5)
        eps = torch.randn_like(mean)
        check_eps(mean, torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0)), eps, scale_factor, z_sample)
        model = model.double()
        image64 = model.decode(z.double())
        mean64 = torch.chunk(model.encode_moments(x.double()), 2, dim=1)[0]
    assert image.dtype == torch.float32 and image64.dtype == torch.float64 and mean64.dtype == torch.float64
    return {"image": image, "image_f64": image64, "x": x, "z_mean": scale_factor * mean,
            "z_mean_f64": scale_factor * mean64, "eps": eps, "z_sample": z_sample}


def ldm_case(name, ddconfig, embed_dim, seed, scale_factor=0.18215, sd_ckpt=False):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    state = ldm_state_dict(ddconfig, embed_dim, seed)
    plain = os.path.join(d, "autoencoder_kl.pth")
    torch.save(state, plain)
    z, x = z_for(seed), x_for(seed)
    io = ldm_reference(plain, ddconfig, embed_dim, scale_factor, z, x, seed)
    if sd_ckpt:
        # Stable Diffusion's Lightning checkpoint: the whole LatentDiffusion state dict under
        # "state_dict", the VAE as first_stage_model.*; the others stand in for the UNet and CLIP.
        wrapped = {"first_stage_model." + k: v for k, v in state.items()}
        g = torch.Generator().manual_seed(seed + 3)
        wrapped["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(8, 4, 3, 3, generator=g)
        wrapped["cond_stage_model.transformer.text_model.final_layer_norm.bias"] = torch.randn(8, generator=g)
        os.remove(plain)
        files = "model.ckpt"
        torch.save({"state_dict": wrapped, "global_step": 0}, os.path.join(d, files))
        back = torch.load(os.path.join(d, files))["state_dict"]
        assert all(torch.equal(back["first_stage_model." + k], v) for k, v in state.items())
    else:
        files = "autoencoder_kl.pth"
        again = ldm_reference(plain, ddconfig, embed_dim, scale_factor, z, x, seed)
        assert all(again[k].equal(v) for k, v in io.items())
    cfg = dict(ddconfig, embed_dim=embed_dim, scale_factor=scale_factor)
    write_case(name, files, dict(io, z=z), cfg)


def diffusers_case(name, config, seed):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**config)
    perturb_norms(vae, torch.Generator().manual_seed(seed + 1))
    vae.save_pretrained(d, safe_serialization=True)
    z, x = z_for(seed), x_for(seed)
    vae = AutoencoderKL.from_pretrained(d).eval()
    sf = vae.config.scaling_factor
    with torch.no_grad():
        image = vae.decode(z / sf).sample
        post = vae.encode(x).latent_dist
        z_sample = post.sample(generator=torch.Generator().manual_seed(seed + 5)) * sf
        eps = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(seed + 5))
        check_eps(post.mean, post.std, eps, sf, z_sample)
        vae = vae.double()
        image64 = vae.decode(z.double() / sf).sample
        mean64 = vae.encode(x.double()).latent_dist.mean
    assert image.dtype == torch.float32 and image64.dtype == torch.float64
    io = {"z": z, "image": image.contiguous(), "image_f64": image64.contiguous(), "x": x,
          "z_mean": (post.mean * sf).contiguous(), "z_mean_f64": (mean64 * sf).contiguous(),
          "eps": eps, "z_sample": z_sample.contiguous()}
    save_file(io, os.path.join(d, "io.safetensors"),
              metadata={"made_by": f"golden/vae_reference.py, diffusers {diffusers.__version__}, "
                                   f"torch {torch.__version__}"})
    rel = ((image64 - image.double()).abs().max() / image64.abs().max()).item()
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: save_pretrained, z {tuple(z.shape)} -> image {tuple(image.shape)}, |image| max "
          f"{image.abs().max():.4f}, f32 vs f64 max rel {rel:.2e}, {size / 1e6:.2f} MB")
    print(f"  encode: x {tuple(x.shape)} -> z_mean {tuple(io['z_mean'].shape)}, |z_mean| max "
          f"{io['z_mean'].abs().max():.4f}, f32 vs f64 max rel {enc_rel(io):.2e}, |z_sample - z_mean| max "
          f"{(io['z_sample'] - io['z_mean']).abs().max():.4f}")


def write_shapes(path, header, tensors, enc_tensors):
    n = sum(numpy.prod(s, dtype=numpy.int64) for _, s in tensors)
    ne = sum(numpy.prod(s, dtype=numpy.int64) for _, s in enc_tensors)
    lines = lambda ts: ",\n".join(json.dumps([k, s]) for k, s in ts)
    with open(path, "w") as f:  # one tensor a line
        f.write('{%s,\n"num_parameters": %d,\n"tensors": [\n%s\n],\n"encoder_num_parameters": %d,\n'
                '"encoder_tensors": [\n%s\n]}\n' % (header, n, lines(tensors), ne, lines(enc_tensors)))
    v = json.load(open(path))
    assert v["num_parameters"] == n and len(v["tensors"]) == len(tensors)
    assert v["encoder_num_parameters"] == ne and len(v["encoder_tensors"]) == len(enc_tensors)
    print(f"{os.path.basename(path)}: decoder {n} parameters, {len(tensors)} tensors; encoder {ne} "
          f"parameters, {len(enc_tensors)} tensors")


os.makedirs(OUT, exist_ok=True)
ldm_case("ldm_tiny", dict(double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32,
                          ch_mult=[2, 1], num_res_blocks=1, attn_resolutions=[8], dropout=0.0),
         embed_dim=4, seed=80)
ldm_case("sd_ckpt_tiny", dict(double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32,
                              ch_mult=[1, 1], num_res_blocks=2, attn_resolutions=[], dropout=0.0),
         embed_dim=4, seed=90, sd_ckpt=True)
diffusers_case("diffusers_tiny", dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[64, 32], layers_per_block=1,
    latent_channels=4, norm_num_groups=32, sample_size=16, scaling_factor=0.13025), seed=100)

# Full size, layout only: U-ViT's get_model ddconfig (Stable Diffusion's KL-f8) ...
SD = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
          num_res_blocks=2, attn_resolutions=[], dropout=0.0)
with torch.device("meta"):
    dec = quiet(ae.Decoder, **SD)
    pqc = torch.nn.Conv2d(4, SD["z_channels"], 1)
    enc = quiet(ae.Encoder, **SD)
    qc = torch.nn.Conv2d(2 * SD["z_channels"], 2 * 4, 1)  # as FrozenAutoencoderKL, embed_dim 4
tensors = [["decoder." + k, list(v.shape)] for k, v in dec.state_dict().items()]
tensors += [["post_quant_conv." + k, list(v.shape)] for k, v in pqc.state_dict().items()]
enc_tensors = [["encoder." + k, list(v.shape)] for k, v in enc.state_dict().items()]
enc_tensors += [["quant_conv." + k, list(v.shape)] for k, v in qc.state_dict().items()]
write_shapes(os.path.join(OUT, "sd_kl_f8_shapes.json"),
             '"config": %s' % json.dumps(dict(SD, embed_dim=4, scale_factor=0.18215)), tensors, enc_tensors)
# ... and the same network as diffusers' AutoencoderKL (Stable Diffusion's vae/config.json values).
SD_DIFFUSERS = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                    up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                    layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=256)
with torch.device("meta"):
    vae = AutoencoderKL(**SD_DIFFUSERS)
tensors = [[k, list(v.shape)] for k, v in vae.state_dict().items()
           if k.startswith("decoder.") or k.startswith("post_quant_conv.")]
enc_tensors = [[k, list(v.shape)] for k, v in vae.state_dict().items()
               if k.startswith("encoder.") or k.startswith("quant_conv.")]
assert len(tensors) + len(enc_tensors) == len(vae.state_dict())
write_shapes(os.path.join(OUT, "sd_kl_f8_diffusers_shapes.json"),
             '"config": %s' % json.dumps({k: v for k, v in vae.config.items() if not k.startswith("_")}),
             tensors, enc_tensors)
shutil.rmtree(tmp)
