//! Image sets: the one type every image source yields ([`ImageSet`]), its conversion to the
//! model's input tensor, and the reader for image sets users bring as NumPy files.
//!
//! | file | read as |
//! |---|---|
//! | `.npy` uint8 (N, H, W, C) or (N, C, H, W), C ∈ {1, 3} | images, no labels |
//! | `.npz` `arr_0` uint8, as above (ADM sample batch: NHWC) | images |
//! | `.npz` `arr_1` int64/int32 (N,), optional | class labels (ADM class-conditional batches) |
//!
//! Parsing is candle's `.npy`/`.npz` reader, and the layout rules ([`uint8_images_nchw`],
//! [`npz_array`]) are shared with [`crate::metrics::inputs`], so `diffuq fid` and the data
//! loader accept the same files.

use std::path::Path;

use candle_core::npy::NpzTensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result, TensorContext};

/// uint8 images with optional class labels, as read from a file.
///
/// Pixels stay uint8 in host memory (a quarter of f32's size: the Fashion-MNIST training set is
/// 47 MB instead of 188 MB) until [`ImageSet::to_tensor`] puts them on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    /// N·C·H·W pixels, row-major NCHW.
    pub images: Vec<u8>,
    /// One class index per image. u32 rather than u8: ADM's ImageNet batches have 1000 classes,
    /// and u32 is what candle's embedding lookups index with.
    pub labels: Option<Vec<u32>>,
    pub n: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageSet {
    /// The images of an NCHW uint8 tensor, without labels.
    pub fn from_nchw(t: &Tensor, what: &str) -> Result<Self> {
        let (n, channels, height, width) = t.dims4().ctx(what)?;
        if t.dtype() != DType::U8 {
            return Err(Error::invalid(
                what,
                format!("{:?} tensor; expected uint8 images", t.dtype()),
            ));
        }
        let images = t.flatten_all().and_then(|t| t.to_vec1::<u8>()).ctx(what)?;
        Ok(Self {
            images,
            labels: None,
            n,
            channels,
            height,
            width,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Attach labels read from `source`; a count other than one per image is an error naming it.
    pub fn with_labels(mut self, labels: Vec<u32>, source: &str) -> Result<Self> {
        if labels.len() != self.n {
            return Err(Error::invalid(
                source,
                format!(
                    "{} labels for {} images; expected one label per image",
                    labels.len(),
                    self.n
                ),
            ));
        }
        self.labels = Some(labels);
        Ok(self)
    }

    /// The images as an N×C×S×S f32 tensor on `device`, scaled to [-1, 1] by x/127.5 − 1 (DDPM's
    /// convention: `ToTensor` then `Normalize(0.5, 0.5)` gives the same numbers).
    ///
    /// `size` (S, the value of the config key `key`, named in errors) is reached as follows:
    /// - S = H = W: the pixels as they are;
    /// - S > H = W: black (-1) borders of (S − H)/2 on every side, as DDPM-style models padding
    ///   28×28 Fashion-MNIST to 32×32 do (S − H must be even, so the image stays centred);
    /// - S < H = W: candle's `upsample_bilinear2d` with `align_corners = false`, which computes
    ///   what torch's `F.interpolate(mode="bilinear", align_corners=False, antialias=False)` does:
    ///   each output pixel interpolates the 2×2 input pixels around its centre, without
    ///   antialiasing (28 → 14 is exactly the mean of each 2×2 block; below half size some input
    ///   pixels get no weight).
    ///
    /// Non-square images are an error (there is no S×S tensor of them without cropping).
    pub fn to_tensor(&self, size: usize, key: &str, device: &Device) -> Result<Tensor> {
        let (h, w) = (self.height, self.width);
        let bad = |reason: String| Error::invalid(format!("config key `{key}` = {size}"), reason);
        if size == 0 {
            return Err(bad("the image size must be positive".into()));
        }
        if h != w {
            return Err(bad(format!(
                "the images are {h}×{w}; an S×S tensor needs square images"
            )));
        }
        if size > h && !(size - h).is_multiple_of(2) {
            return Err(bad(format!(
                "padding {h}×{h} images to {size}×{size} needs an even difference (symmetric \
                 borders); use {} or {}",
                size - 1,
                size + 1
            )));
        }
        let ctx = "images to a [-1, 1] tensor";
        let t = Tensor::from_slice(&self.images, (self.n, self.channels, h, w), device)
            .and_then(|t| t.to_dtype(DType::F32))
            .ctx(ctx)?;
        let t = if size > h {
            // Raw pixel value 0 is black, which the affine map below sends to -1.
            let p = (size - h) / 2;
            t.pad_with_zeros(2, p, p)
                .and_then(|t| t.pad_with_zeros(3, p, p))
                .ctx(ctx)?
        } else if size < h {
            t.upsample_bilinear2d(size, size, false).ctx(ctx)?
        } else {
            t
        };
        t.affine(1.0 / 127.5, -1.0).ctx(ctx)
    }
}

/// The kinds of uint8 image layouts `channels` allows, for error messages:
/// "(N, H, W, 3) or (N, 3, H, W)", or with C when several channel counts are allowed.
fn layouts(channels: &[usize]) -> String {
    match channels {
        [c] => format!("(N, H, W, {c}) or (N, {c}, H, W)"),
        cs => {
            let cs: Vec<String> = cs.iter().map(|c| c.to_string()).collect();
            format!("(N, H, W, C) or (N, C, H, W) with C = {}", cs.join(" or "))
        }
    }
}

/// A uint8 image array as contiguous NCHW. NHWC (the last axis a channel count in `channels`)
/// is recognised first, as NumPy/PIL/ADM write images, then NCHW (torch's layout); anything
/// else is a one-line error naming `what` (the file and array), the dtype and the shape.
pub(crate) fn uint8_images_nchw(t: Tensor, what: &str, channels: &[usize]) -> Result<Tensor> {
    let bad = |t: &Tensor| {
        Error::invalid(
            what,
            format!(
                "{:?} of shape {:?}; expected uint8 images {}",
                t.dtype(),
                t.dims(),
                layouts(channels)
            ),
        )
    };
    if t.dtype() != DType::U8 || t.rank() != 4 {
        return Err(bad(&t));
    }
    let dims = t.dims().to_vec();
    // An empty set or 0-pixel images would reach the resizers (Inception's 299², the networks'
    // inputs) and fail there far from the file; say so here.
    if dims.contains(&0) {
        return Err(Error::invalid(
            what,
            format!(
                "uint8 array of shape {dims:?} is empty; expected at least one image of at least \
                 1×1 pixels, {}",
                layouts(channels)
            ),
        ));
    }
    if channels.contains(&dims[3]) {
        t.permute((0, 3, 1, 2))
            .and_then(|t| t.contiguous())
            .ctx("images NHWC → NCHW")
    } else if channels.contains(&dims[1]) {
        Ok(t)
    } else {
        Err(bad(&t))
    }
}

/// The array `name` of an open `.npz`; a missing or unreadable one is a one-line error naming
/// the file, the array and the arrays the file has.
pub(crate) fn npz_array(npz: &NpzTensors, path: &Path, name: &str) -> Result<Tensor> {
    let what = format!("{} array `{name}`", path.display());
    match npz.get(name) {
        Ok(Some(t)) => Ok(t),
        Ok(None) => {
            let mut names: Vec<&str> = npz.names().iter().map(|s| s.as_str()).collect();
            names.sort_unstable();
            Err(Error::invalid(
                what,
                format!("is missing (the file has: {})", names.join(", ")),
            ))
        }
        Err(e) => Err(Error::invalid(what, e.to_string())),
    }
}

const EXPECTED: &str = "expected an .npy of uint8 images (N, H, W, C) or (N, C, H, W) with C = 1 \
                        or 3, or an .npz with `arr_0` (such images) and optionally `arr_1` \
                        (int64/int32 labels)";

/// Reads a user image set (layouts in the module doc). Labels come from an `.npz`'s `arr_1`.
pub fn read_image_set(path: &Path) -> Result<ImageSet> {
    let file = path.display().to_string();
    if !path.is_file() {
        return Err(Error::invalid(file, format!("no such file; {EXPECTED}")));
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => {
            let t = super::npy::read_npy(path).map_err(|e| {
                Error::invalid(&file, format!("not a readable .npy ({e}); {EXPECTED}"))
            })?;
            let what = format!("{file} array");
            ImageSet::from_nchw(&uint8_images_nchw(t, &what, &[1, 3])?, &what)
        }
        Some("npz") => {
            let npz = super::npy::open_npz(path).map_err(|e| {
                Error::invalid(&file, format!("not a readable .npz ({e}); {EXPECTED}"))
            })?;
            let what = format!("{file} array `arr_0`");
            let t = uint8_images_nchw(npz_array(&npz, path, "arr_0")?, &what, &[1, 3])?;
            let set = ImageSet::from_nchw(&t, &what)?;
            if !npz.names().iter().any(|n| *n == "arr_1") {
                return Ok(set);
            }
            let what = format!("{file} array `arr_1`");
            let labels = labels_of(&npz_array(&npz, path, "arr_1")?, &what)?;
            set.with_labels(labels, &what)
        }
        _ => Err(Error::invalid(
            file,
            format!("unknown extension; {EXPECTED}"),
        )),
    }
}

/// Class labels from an int64/int32 (N,) array; negative or > u32::MAX values are errors.
fn labels_of(t: &Tensor, what: &str) -> Result<Vec<u32>> {
    let bad = || {
        Error::invalid(
            what,
            format!(
                "{:?} of shape {:?}; expected int64 or int32 class labels (N,)",
                t.dtype(),
                t.dims()
            ),
        )
    };
    if t.rank() != 1 {
        return Err(bad());
    }
    let values: Vec<i64> = match t.dtype() {
        DType::I64 => t.to_vec1::<i64>().ctx(what)?,
        DType::I32 => t
            .to_vec1::<i32>()
            .ctx(what)?
            .into_iter()
            .map(i64::from)
            .collect(),
        _ => return Err(bad()),
    };
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            u32::try_from(v).map_err(|_| {
                Error::invalid(
                    what,
                    format!("label {v} at index {i}; expected class indices 0..2^32"),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu() -> Device {
        Device::Cpu
    }

    /// Pixels numbered 0, 1, 2, … in NCHW order.
    fn ramp(n: usize, c: usize, h: usize, w: usize) -> ImageSet {
        ImageSet {
            images: (0..n * c * h * w).map(|i| (i % 256) as u8).collect(),
            labels: None,
            n,
            channels: c,
            height: h,
            width: w,
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    // Expected numbers: x/127.5 − 1 by hand (0 → -1, 255 → 1, 51 → -0.6).
    #[test]
    fn same_size_is_the_affine_map_only() {
        let mut set = ramp(1, 1, 2, 2);
        set.images = vec![0, 255, 51, 127];
        let t = set.to_tensor(2, "data.image_size", &cpu()).unwrap();
        assert_eq!(t.dims(), &[1, 1, 2, 2]);
        let v = values(&t);
        let want = [-1.0, 1.0, -0.6, 127.0 / 127.5 - 1.0];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
    }

    // Expected numbers: a 2×2 white image padded to 4×4 has a one-pixel black (-1) frame around
    // the four white (1) pixels — by construction of symmetric padding.
    #[test]
    fn padding_adds_black_borders_on_every_side() {
        let mut set = ramp(1, 1, 2, 2);
        set.images = vec![255; 4];
        let t = set.to_tensor(4, "data.image_size", &cpu()).unwrap();
        assert_eq!(t.dims(), &[1, 1, 4, 4]);
        #[rustfmt::skip]
        let want = [
            -1.0, -1.0, -1.0, -1.0,
            -1.0,  1.0,  1.0, -1.0,
            -1.0,  1.0,  1.0, -1.0,
            -1.0, -1.0, -1.0, -1.0,
        ];
        assert_eq!(values(&t), want);
    }

    // Expected numbers: bilinear 4 → 2 with align_corners = false samples at input coordinate
    // (i + 0.5)·2 − 0.5 = 2i + 0.5, i.e. the mean of each 2×2 block (torch's documented
    // convention); blocks of pixels 0,1,4,5 → 2.5, 2,3,6,7 → 4.5, 8,9,12,13 → 10.5, … → 12.5.
    #[test]
    fn halving_averages_two_by_two_blocks() {
        let set = ramp(1, 1, 4, 4);
        let t = set.to_tensor(2, "data.image_size", &cpu()).unwrap();
        assert_eq!(t.dims(), &[1, 1, 2, 2]);
        let want = [2.5f32, 4.5, 10.5, 12.5].map(|x| x / 127.5 - 1.0);
        for (a, b) in values(&t).iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn impossible_sizes_name_the_key() {
        let set = ramp(1, 1, 4, 4);
        for size in [0, 5] {
            let msg = set
                .to_tensor(size, "data.image_size", &cpu())
                .unwrap_err()
                .to_string();
            assert_eq!(msg.lines().count(), 1, "{msg}");
            assert!(msg.contains("`data.image_size` = "), "{msg}");
        }
        let wide = ramp(1, 1, 4, 6);
        let msg = wide
            .to_tensor(4, "data.image_size", &cpu())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("4×6") && msg.contains("square"), "{msg}");
        assert!(wide.to_tensor(6, "data.image_size", &cpu()).is_err());
    }

    fn write_npy(t: &Tensor, path: &Path) {
        t.write_npy(path).unwrap();
    }

    // Expected numbers: the pixels written, permuted NHWC → NCHW by index arithmetic
    // (NHWC element (n, y, x, c) is at ((n·H + y)·W + x)·C + c).
    #[test]
    fn npy_nhwc_and_nchw_give_the_same_set() {
        let dir = tempfile::tempdir().unwrap();
        let (n, h, w, c) = (2, 3, 4, 3);
        let nhwc: Vec<u8> = (0..n * h * w * c).map(|i| i as u8).collect();
        let t = Tensor::from_vec(nhwc.clone(), (n, h, w, c), &cpu()).unwrap();
        write_npy(&t, &dir.path().join("nhwc.npy"));
        write_npy(
            &t.permute((0, 3, 1, 2)).unwrap().contiguous().unwrap(),
            &dir.path().join("nchw.npy"),
        );
        let a = read_image_set(&dir.path().join("nhwc.npy")).unwrap();
        let b = read_image_set(&dir.path().join("nchw.npy")).unwrap();
        assert_eq!(a, b);
        assert_eq!((a.n, a.channels, a.height, a.width), (n, c, h, w));
        assert_eq!(a.labels, None);
        for (ni, ci, y, x) in [(0, 0, 0, 0), (1, 2, 2, 3), (0, 1, 2, 1)] {
            assert_eq!(
                a.images[((ni * c + ci) * h + y) * w + x],
                nhwc[((ni * h + y) * w + x) * c + ci]
            );
        }
        // Grayscale, both layouts.
        let g = Tensor::from_vec(vec![7u8; 2 * 5 * 5], (2, 5, 5, 1), &cpu()).unwrap();
        write_npy(&g, &dir.path().join("g.npy"));
        let s = read_image_set(&dir.path().join("g.npy")).unwrap();
        assert_eq!((s.n, s.channels, s.height, s.width), (2, 1, 5, 5));
    }

    // Expected numbers: the labels written into `arr_1`.
    #[test]
    fn npz_sample_batch_with_and_without_labels() {
        let dir = tempfile::tempdir().unwrap();
        let imgs = Tensor::zeros((3, 4, 4, 3), DType::U8, &cpu()).unwrap();
        let with = dir.path().join("batch.npz");
        let labels = Tensor::new(&[999i64, 0, 5], &cpu()).unwrap();
        Tensor::write_npz(&[("arr_0", &imgs), ("arr_1", &labels)], &with).unwrap();
        let s = read_image_set(&with).unwrap();
        assert_eq!(s.labels, Some(vec![999, 0, 5]));
        assert_eq!((s.n, s.channels, s.height, s.width), (3, 3, 4, 4));

        let i32_labels = Tensor::new(&[1i32, 2, 3], &cpu()).unwrap();
        Tensor::write_npz(&[("arr_0", &imgs), ("arr_1", &i32_labels)], &with).unwrap();
        assert_eq!(read_image_set(&with).unwrap().labels, Some(vec![1, 2, 3]));

        let without = dir.path().join("plain.npz");
        Tensor::write_npz(&[("arr_0", &imgs)], &without).unwrap();
        assert_eq!(read_image_set(&without).unwrap().labels, None);
    }

    #[test]
    fn wrong_arrays_are_one_line_errors_naming_file_and_array() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let check = |file: &str, needles: &[&str]| {
            let msg = read_image_set(&d.join(file)).unwrap_err().to_string();
            assert_eq!(msg.lines().count(), 1, "{msg}");
            assert!(msg.contains(file), "{msg}");
            for n in needles {
                assert!(msg.contains(n), "`{n}` missing from: {msg}");
            }
        };
        // Float images.
        write_npy(
            &Tensor::zeros((2, 4, 4, 3), DType::F32, &cpu()).unwrap(),
            &d.join("float.npy"),
        );
        check("float.npy", &["array", "F32", "expected uint8 images"]);
        // Four channels.
        write_npy(
            &Tensor::zeros((2, 4, 4, 4), DType::U8, &cpu()).unwrap(),
            &d.join("rgba.npy"),
        );
        check("rgba.npy", &["[2, 4, 4, 4]", "C = 1 or 3"]);
        // Zero-size images (found panicking in the Inception preprocessing).
        write_npy(
            &Tensor::zeros((4, 0, 0, 3), DType::U8, &cpu()).unwrap(),
            &d.join("empty.npy"),
        );
        check("empty.npy", &["[4, 0, 0, 3]", "is empty"]);
        // A header claiming 10¹² elements (found aborting the process on the allocation).
        let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (1000000000000,), }\n";
        let mut claim = b"\x93NUMPY\x01\x00".to_vec();
        claim.extend((header.len() as u16).to_le_bytes());
        claim.extend(header.as_bytes());
        claim.extend([0u8; 64]);
        std::fs::write(d.join("huge.npy"), &claim).unwrap();
        check(
            "huge.npy",
            &["not a readable .npy", "1000000000000 bytes of data"],
        );
        // Labels of the wrong dtype, count, or sign.
        let imgs = Tensor::zeros((3, 4, 4, 1), DType::U8, &cpu()).unwrap();
        let f = Tensor::new(&[1f32, 2., 3.], &cpu()).unwrap();
        Tensor::write_npz(&[("arr_0", &imgs), ("arr_1", &f)], d.join("fl.npz")).unwrap();
        check("fl.npz", &["array `arr_1`", "F32", "int64 or int32"]);
        let two = Tensor::new(&[1i64, 2], &cpu()).unwrap();
        Tensor::write_npz(&[("arr_0", &imgs), ("arr_1", &two)], d.join("two.npz")).unwrap();
        check("two.npz", &["array `arr_1`", "2 labels for 3 images"]);
        let neg = Tensor::new(&[1i64, -2, 3], &cpu()).unwrap();
        Tensor::write_npz(&[("arr_0", &imgs), ("arr_1", &neg)], d.join("neg.npz")).unwrap();
        check("neg.npz", &["array `arr_1`", "label -2 at index 1"]);
        // No arr_0.
        Tensor::write_npz(&[("mu", &f)], d.join("stats.npz")).unwrap();
        check(
            "stats.npz",
            &["array `arr_0`", "is missing (the file has: mu)"],
        );
        // Not NumPy at all, unknown extension, missing file.
        std::fs::write(d.join("junk.npy"), b"nope").unwrap();
        check("junk.npy", &["not a readable .npy"]);
        std::fs::write(d.join("x.png"), b"nope").unwrap();
        check("x.png", &["unknown extension"]);
        check("absent.npz", &["no such file"]);
    }
}
