//! Data sources: the toy grid, Fashion-MNIST, and image sets users bring as NumPy files, the
//! latter two as one [`ImageSet`] type.

pub mod fashion_mnist;
pub mod images;
pub mod npy;
pub mod toy_grid;

pub use images::ImageSet;
