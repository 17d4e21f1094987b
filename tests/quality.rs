//! The sample-quality measure (`train::quality`): the classifier learns MNIST, the Fréchet
//! distance of a set with itself is ~0, and it grows as noise is added to the images.
#![cfg(feature = "train")]

use std::path::PathBuf;

use tinydiffusion::schedule::GaussianNoise;
use tinydiffusion::train::data::Dataset;
use tinydiffusion::train::quality::{
    frechet_distance, Classifier, ClassifierOptions, FeatureStats,
};

fn mnist(range: std::ops::Range<usize>) -> Dataset {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/mnist/t10k-images-idx3-ubyte.gz");
    Dataset::mnist(&path, range, (32, 32)).unwrap()
}

#[test]
fn frechet_distance_is_zero_on_itself_and_grows_with_noise() {
    let train = mnist(0..3000);
    let held = mnist(9000..9500);
    let opts = ClassifierOptions {
        hidden: 64,
        epochs: 3,
        ..ClassifierOptions::default()
    };
    let clf = Classifier::train(&train, opts).unwrap();
    let acc = clf.accuracy(&held);
    assert!(acc > 0.8, "held-out accuracy {acc}");
    // Same seed, same weights.
    let again = Classifier::train(&train, opts).unwrap();
    assert_eq!(
        clf.features(&held.images[..1024]),
        again.features(&held.images[..1024])
    );

    let stats = |images: &[f32]| FeatureStats::of(&clf.features(images), clf.hidden).unwrap();
    let reference = stats(&held.images);
    let same = frechet_distance(&reference, &reference);
    assert!(same.abs() < 1e-6, "FD with itself {same}");
    let noise = GaussianNoise::new(1);
    let mut z = vec![0.0f32; held.images.len()];
    noise.fill(0, &mut z);
    let fds: Vec<f64> = [0.1f32, 0.3, 0.6, 1.0]
        .iter()
        .map(|&s| {
            let noisy: Vec<f32> = held.images.iter().zip(&z).map(|(x, n)| x + s * n).collect();
            frechet_distance(&stats(&noisy), &reference)
        })
        .collect();
    // Another 500 real digits are closer than these digits with noise of std 0.6 (the FD of
    // 500 vs 500 images carries a small-sample bias: ~1.7 here).
    let other = frechet_distance(&stats(&mnist(8500..9000).images), &reference);
    eprintln!("FD other digits {other:.3}, with noise 0.1/0.3/0.6/1.0: {fds:.3?}");
    assert!(fds.windows(2).all(|w| w[0] < w[1]), "{fds:?}");
    assert!(other < fds[2], "{other} vs {fds:?}");
}
