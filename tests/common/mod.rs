//! Shared helpers for the integration tests: reading the reference fixtures copied from
//! diffusers (tests/fixtures, see tests/fixtures/README.md) and comparing with relative L2.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// A safetensors file of reference tensors, read whole (tests only).
pub struct TensorFile {
    bytes: Vec<u8>,
}

impl TensorFile {
    pub fn open(path: impl Into<PathBuf>) -> TensorFile {
        let path = path.into();
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        TensorFile { bytes }
    }

    fn view(&self, name: &str) -> safetensors::tensor::TensorView<'_> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).expect("fixture header");
        st.tensor(name)
            .unwrap_or_else(|e| panic!("fixture tensor {name}: {e:?}"))
    }

    /// Every tensor name in the file.
    pub fn names(&self) -> Vec<String> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).expect("fixture header");
        st.names().into_iter().map(String::from).collect()
    }

    pub fn has(&self, name: &str) -> bool {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).expect("fixture header");
        st.tensor(name).is_ok()
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.view(name).shape().to_vec()
    }

    /// Any float or integer tensor, converted to f64.
    pub fn f64s(&self, name: &str) -> Vec<f64> {
        use safetensors::Dtype;
        let v = self.view(name);
        let d = v.data();
        match v.dtype() {
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("{name}: dtype {other:?} not handled in tests"),
        }
    }

    pub fn f32s(&self, name: &str) -> Vec<f32> {
        self.f64s(name).into_iter().map(|v| v as f32).collect()
    }

    pub fn i64s(&self, name: &str) -> Vec<i64> {
        self.f64s(name).into_iter().map(|v| v as i64).collect()
    }
}

/// ||a - b|| / ||b||, in f64.
pub fn rel_l2<A: Copy + Into<f64>, B: Copy + Into<f64>>(ours: &[A], expected: &[B]) -> f64 {
    assert_eq!(ours.len(), expected.len(), "length mismatch");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&a, &b) in ours.iter().zip(expected) {
        let (a, b) = (a.into(), b.into());
        num += (a - b) * (a - b);
        den += b * b;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

pub fn read_json(path: impl Into<PathBuf>) -> serde_json::Value {
    let path = path.into();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture json")
}

/// One `sample` case of a fixture model (see FORMAT.md): its scheduler, injected noise,
/// labels and guidance, and the expected final sample.
pub struct SampleCase {
    pub name: String,
    pub scheduler: tinydiffusion::schedule::Scheduler,
    pub x_t: Vec<f32>,
    pub noise: Option<Vec<f32>>,
    pub labels: Option<Vec<i64>>,
    pub guidance: Option<tinydiffusion::sampler::Guidance>,
    pub batch: usize,
    case: serde_json::Value,
}

impl SampleCase {
    pub fn read(
        model: &tinydiffusion::Model,
        case: &serde_json::Value,
        tensors: &TensorFile,
    ) -> SampleCase {
        use tinydiffusion::schedule::{Scheduler, SchedulerConfig};
        let cfg = SchedulerConfig::from_json(&case["scheduler"].to_string()).unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let mut scheduler = Scheduler::new(cfg, steps).unwrap();
        scheduler.set_eta(case["eta"].as_f64().unwrap_or(0.0));
        let inputs = &case["inputs"];
        let x_t = tensors.f32s(inputs["x_T"].as_str().unwrap());
        let noise = inputs
            .get("noise")
            .map(|n| tensors.f32s(n.as_str().unwrap()));
        let labels = inputs
            .get("class_labels")
            .map(|n| tensors.i64s(n.as_str().unwrap()));
        let (c, h, w) = model.input_shape();
        let guidance = case["guidance_w"]
            .as_f64()
            .map(|w| tinydiffusion::sampler::Guidance {
                scale: w as f32,
                null_class: case["null_class"].as_i64().unwrap(),
            });
        SampleCase {
            name: case["name"].as_str().unwrap().to_string(),
            scheduler,
            batch: x_t.len() / (c * h * w),
            x_t,
            noise,
            labels,
            guidance,
            case: case.clone(),
        }
    }

    /// The run as diffusers made it: injected x_T and step noise, the case's labels and
    /// guidance.
    pub fn options(&self) -> tinydiffusion::sampler::SampleOptions<'_> {
        tinydiffusion::sampler::SampleOptions {
            batch: self.batch,
            seed: 0,
            initial_noise: Some(&self.x_t),
            step_noise: self.noise.as_deref(),
            class_labels: self.labels.as_deref(),
            guidance: self.guidance,
            text: None,
            threads: 0,
        }
    }

    /// Workspace floats of this run on `model`.
    pub fn workspace_len(&self, model: &tinydiffusion::Model) -> usize {
        tinydiffusion::sampler::workspace_len(
            model,
            &self.scheduler,
            self.batch,
            self.guidance.is_some(),
        )
    }

    /// Expected timesteps of the schedule.
    pub fn expected_timesteps(&self, tensors: &TensorFile) -> Vec<i64> {
        tensors.i64s(self.case["expected"]["timesteps"].as_str().unwrap())
    }

    /// Expected x_0: the last row of the trajectory.
    pub fn expected_final(&self, tensors: &TensorFile) -> Vec<f64> {
        let traj = tensors.f64s(self.case["expected"]["traj"].as_str().unwrap());
        traj[traj.len() - self.x_t.len()..].to_vec()
    }
}

/// The `forward` case of a fixture folder's `cases.json` / `cases.safetensors`: inputs, the
/// float64 output and the per-block activations (names into `tensors`).
pub struct ForwardCase {
    pub x: Vec<f32>,
    pub t: Vec<f32>,
    pub labels: Option<Vec<i64>>,
    pub expected: Vec<f64>,
    pub activations: serde_json::Map<String, serde_json::Value>,
    pub tensors: TensorFile,
}

pub fn forward_case(model: &str) -> ForwardCase {
    let dir = fixtures_dir().join(model);
    let cases = read_json(dir.join("cases.json"));
    let case = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "forward")
        .unwrap()
        .clone();
    let tensors = TensorFile::open(dir.join("cases.safetensors"));
    let inputs = &case["inputs"];
    let x = tensors.f32s(inputs["x"].as_str().unwrap());
    let t = tensors.f32s(inputs["t"].as_str().unwrap());
    let labels = inputs
        .get("class_labels")
        .map(|n| tensors.i64s(n.as_str().unwrap()));
    let expected = tensors.f64s(case["expected"]["out"].as_str().unwrap());
    let activations = case["expected"]["activations"].as_object().unwrap().clone();
    ForwardCase {
        x,
        t,
        labels,
        expected,
        activations,
        tensors,
    }
}

/// A tap's tensor, NHWC in the workspace `ws` of a forward pass of `model` (built with
/// `Reuse::None`), as diffusers' NCHW (the library's own `nhwc_to_nchw`); `[B, E]`
/// embeddings (1x1 taps) come out as they are.
#[allow(dead_code)]
pub fn tap_nchw(
    model: &tinydiffusion::Model,
    ws: &[f32],
    tap: &tinydiffusion::model::Tap,
    batch: usize,
) -> Vec<f32> {
    let data = model
        .tensor_data(ws, tap.tensor, batch)
        .expect("tap in workspace");
    let mut out = vec![0.0f32; data.len()];
    let pixels = tap.height * tap.width;
    tinydiffusion::kernels::nhwc_to_nchw(data, &mut out, batch, tap.channels, pixels);
    out
}

/// The trainer's "simple" loss (epsilon prediction) of the forward output in `ws.out` for the
/// batch `x0`, `eps`, `x_t` at integer `timesteps` (`channels` x `pixels` per sample), with its
/// gradient written to `ws.d_out`: what every gradient test does after `forward`.
#[cfg(feature = "train")]
#[allow(dead_code, clippy::too_many_arguments)]
pub fn simple_loss(
    ws: &mut tinydiffusion::train::TrainWorkspace,
    sched: &tinydiffusion::train::loss::NoiseSchedule,
    channels: usize,
    pixels: usize,
    x0: &[f32],
    eps: &[f32],
    x_t: &[f32],
    timesteps: &[usize],
) -> tinydiffusion::train::loss::LossValue {
    use tinydiffusion::schedule::PredictionType;
    use tinydiffusion::train::loss::{loss_and_grad, Batch, LossKind};
    let b = Batch {
        channels,
        pixels,
        x0,
        eps,
        x_t,
        timesteps,
    };
    let out = ws.out.clone();
    loss_and_grad(
        LossKind::Simple,
        PredictionType::Epsilon,
        sched,
        &b,
        &out,
        &mut ws.d_out,
    )
    .unwrap()
}

/// Runs a `sample` CLI replay (`cmd` ends with `--save-tensor out`) and returns the `x_0` it
/// saved; a failed run panics with `what` and the CLI's stderr.
#[allow(dead_code)]
pub fn replay_x0(cmd: &mut std::process::Command, out: &std::path::Path, what: &str) -> Vec<f32> {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    TensorFile::open(out).f32s("x_0")
}
