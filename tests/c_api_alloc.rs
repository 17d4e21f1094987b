//! The C API's sampling and model evaluation allocate nothing: a counting global allocator
//! watches `td_sample_with_scheduler` (seeded noise, guidance) and `td_model_eval`.
//! Runs without libtest's harness, whose own threads allocate (see tests/zero_alloc.rs).

mod common;

use std::ffi::CString;

use common::fixtures_dir;
use tinydiffusion::capi::*;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::allocations_during;

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

fn main() {
    let dir = CString::new(fixtures_dir().join("tiny-class16").to_str().unwrap()).unwrap();
    let mut model = std::ptr::null_mut();
    let mut info = td_model_info::default();
    // SAFETY: valid pointers throughout; every buffer is sized as the library says.
    unsafe {
        assert_eq!(td_model_load(dir.as_ptr(), &mut model), td_status::Ok);
        assert_eq!(td_model_get_info(model, &mut info), td_status::Ok);
        let desc = td_sampler_desc {
            batch: 2,
            seed: 3,
            class_label: 1,
            guidance: 2.0,
            scheduler: td_scheduler_desc {
                kind: td_scheduler_kind::Ddim as i32,
                steps: 8,
                eta: 0.5,
                flags: 0,
            },
            ..td_sampler_desc_default()
        };
        let mut scheduler = std::ptr::null_mut();
        assert_eq!(
            td_scheduler_new(model, &desc.scheduler, &mut scheduler),
            td_status::Ok
        );
        let mut ws_len = 0;
        assert_eq!(
            td_sample_workspace_len(model, &desc, &mut ws_len),
            td_status::Ok
        );
        let mut ws = vec![0.0f32; ws_len];
        let mut out = vec![0.0f32; 2 * info.sample_len];
        let mut run = || {
            let s = td_sample_with_scheduler(
                model,
                scheduler,
                &desc,
                ws.as_mut_ptr(),
                ws.len(),
                out.as_mut_ptr(),
                out.len(),
            );
            assert_eq!(s, td_status::Ok);
        };
        run(); // warm up (lazy statics, thread pools)
        let n = allocations_during(run);
        assert_eq!(n, 0, "td_sample_with_scheduler allocated {n} times");

        let mut eval_len = 0;
        assert_eq!(
            td_model_workspace_len(model, 2, &mut eval_len),
            td_status::Ok
        );
        let mut ews = vec![0.0f32; eval_len];
        let x = vec![0.25f32; 2 * info.sample_len];
        let t = [3.0f32, 900.0];
        let labels = [0i64, 5];
        let mut eps = vec![0.0f32; 2 * info.sample_len];
        let mut eval = || {
            let s = td_model_eval(
                model,
                ews.as_mut_ptr(),
                ews.len(),
                x.as_ptr(),
                x.len(),
                t.as_ptr(),
                2,
                labels.as_ptr(),
                2,
                eps.as_mut_ptr(),
                eps.len(),
            );
            assert_eq!(s, td_status::Ok);
        };
        eval();
        let n = allocations_during(eval);
        assert_eq!(n, 0, "td_model_eval allocated {n} times");

        td_scheduler_free(scheduler);
        td_model_free(model);
    }
    println!("c_api_alloc: 1 passed, 0 failed");
}
