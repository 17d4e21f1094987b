//! Pointer and size checks: every pointer and length from C is checked here before use.

use core::ffi::c_char;

use super::{fail, invalid, null, td_model, td_sampler_desc, td_scheduler, td_status, Fail};
use crate::model::Model;

// ---------------------------------------------------------------------------------------------
// Pointer checks
// ---------------------------------------------------------------------------------------------

/// A caller buffer: address and length in bytes, checked for NULL, alignment and size.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    pub(super) addr: usize,
    pub(super) bytes: usize,
}

impl Span {
    pub(super) const EMPTY: Span = Span { addr: 0, bytes: 0 };

    /// A required buffer of `len` elements of `T`.
    pub(super) fn of<T>(ptr: *const T, len: usize, what: &str) -> Result<Span, Fail> {
        if ptr.is_null() {
            return Err(null(what));
        }
        if !(ptr as usize).is_multiple_of(core::mem::align_of::<T>()) {
            return Err(invalid(std::format!(
                "{what} is not aligned to {} bytes",
                core::mem::align_of::<T>()
            )));
        }
        let bytes = len
            .checked_mul(core::mem::size_of::<T>())
            .filter(|&b| b <= isize::MAX as usize && (ptr as usize).checked_add(b).is_some())
            .ok_or_else(|| {
                fail(
                    td_status::BadSize,
                    std::format!("{what}: length {len} is too large to address"),
                )
            })?;
        Ok(Span {
            addr: ptr as usize,
            bytes,
        })
    }

    /// An optional buffer: (NULL, 0) is absent, (NULL, n > 0) an error.
    pub(super) fn optional<T>(ptr: *const T, len: usize, what: &str) -> Result<Option<Span>, Fail> {
        if ptr.is_null() && len == 0 {
            Ok(None)
        } else {
            Span::of(ptr, len, what).map(Some)
        }
    }

    pub(super) fn overlaps(self, other: Span) -> bool {
        self.bytes != 0
            && other.bytes != 0
            && self.addr < other.addr + other.bytes
            && other.addr < self.addr + self.bytes
    }
}

/// Fails if a buffer the call writes overlaps any other buffer of the call (Rust's `&mut`
/// must not alias, and the result would be garbage anyway).
pub(super) fn check_disjoint(written: &[(Span, &str)], read: &[(Span, &str)]) -> Result<(), Fail> {
    for (i, (w, wname)) in written.iter().enumerate() {
        for (o, oname) in written[i + 1..].iter().chain(read) {
            if w.overlaps(*o) {
                return Err(invalid(std::format!("{wname} overlaps {oname}")));
            }
        }
    }
    Ok(())
}

/// # Safety
/// `span` was made by [`Span::of`] from a pointer to `len` initialised `T`s that stay valid and
/// unwritten by others for `'a`.
pub(super) unsafe fn slice<'a, T>(span: Span) -> &'a [T] {
    // SAFETY: non-NULL, aligned, at most isize::MAX bytes (checked in `Span::of`); validity and
    // lifetime are the caller's contract, stated on every entry point.
    unsafe {
        std::slice::from_raw_parts(
            span.addr as *const T,
            span.bytes / core::mem::size_of::<T>(),
        )
    }
}

/// # Safety
/// As [`slice`], and no other reference to the memory exists for `'a` ([`check_disjoint`]
/// checked it against the call's other buffers).
pub(super) unsafe fn slice_mut<'a, T>(span: Span) -> &'a mut [T] {
    // SAFETY: as in `slice`; exclusive access per the caller's contract and `check_disjoint`.
    unsafe {
        std::slice::from_raw_parts_mut(span.addr as *mut T, span.bytes / core::mem::size_of::<T>())
    }
}

/// # Safety
/// `model` is NULL or a pointer returned by `td_model_load` / `td_model_from_memory` and not
/// yet freed.
pub(super) unsafe fn model_ref<'a>(model: *const td_model) -> Result<&'a td_model, Fail> {
    // SAFETY: `as_ref` handles NULL; a non-NULL pointer is a live `Box<td_model>` per the
    // contract above, only ever read through shared references.
    unsafe { model.as_ref() }.ok_or_else(|| null("model"))
}

/// # Safety
/// `scheduler` is NULL or a pointer returned by `td_scheduler_new` and not yet freed.
pub(super) unsafe fn scheduler_ref<'a>(
    scheduler: *const td_scheduler,
) -> Result<&'a td_scheduler, Fail> {
    // SAFETY: as in `model_ref`.
    unsafe { scheduler.as_ref() }.ok_or_else(|| null("scheduler"))
}

/// Reads a caller's struct by value.
///
/// # Safety
/// `ptr` is NULL or points to a readable `T`.
pub(super) unsafe fn read_struct<T: Copy>(ptr: *const T, what: &str) -> Result<T, Fail> {
    Span::of(ptr, 1, what)?;
    // SAFETY: non-NULL and aligned (checked above), readable per the contract. Every `T` used
    // here has only integer, float and raw-pointer fields, for which every bit pattern is valid.
    Ok(unsafe { ptr.read() })
}

/// Reads a caller's `td_sampler_desc` after checking its `struct_size` (its first field)
/// against this library's: a program built against another version of the header is told so
/// (`TD_STATUS_BAD_SIZE`) instead of having its struct misread.
///
/// # Safety
/// `ptr` is NULL or points to a readable `td_sampler_desc` of the caller's header: at least
/// its first field, a `size_t`, and `struct_size` bytes from there.
pub(super) unsafe fn read_desc(ptr: *const td_sampler_desc) -> Result<td_sampler_desc, Fail> {
    let span = Span::of(ptr, 1, "desc")?;
    // SAFETY: non-NULL and aligned for the struct (so for its first field, a `usize`), and the
    // first field is readable per the contract.
    let size = unsafe { (span.addr as *const usize).read() };
    let expected = core::mem::size_of::<td_sampler_desc>();
    if size != expected {
        return Err(fail(
            td_status::BadSize,
            std::format!(
                "desc->struct_size is {size}, this library's td_sampler_desc is {expected} bytes: \
                 start from td_sampler_desc_default() and build against this library's header"
            ),
        ));
    }
    // SAFETY: the caller's struct is this library's (its size field says so), readable per
    // the contract.
    unsafe { read_struct(ptr, "desc") }
}

/// A NUL-terminated UTF-8 string of a description field; invalid UTF-8 is
/// `TD_STATUS_INVALID_ARGUMENT` naming the field.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string readable for the call.
pub(super) unsafe fn c_text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Fail> {
    if ptr.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-NULL (checked above) and NUL-terminated per the contract.
    let s = unsafe { core::ffi::CStr::from_ptr(ptr) };
    s.to_str()
        .map_err(|_| invalid(std::format!("{what} is not UTF-8")))
}

/// Writes a value to a caller's out-pointer.
///
/// # Safety
/// `ptr` is NULL or points to writable memory for a `T`.
pub(super) unsafe fn write_out<T>(ptr: *mut T, value: T, what: &str) -> Result<(), Fail> {
    Span::of(ptr as *const T, 1, what)?;
    // SAFETY: non-NULL and aligned (checked above), writable per the contract; `T` is `Copy`
    // data or a raw pointer, so nothing is dropped.
    unsafe { ptr.write(value) };
    Ok(())
}

/// UTF-8 text from a (pointer, length) pair.
///
/// # Safety
/// `ptr` points to `len` readable bytes (checked for NULL here).
pub(super) unsafe fn text<'a>(ptr: *const c_char, len: usize, file: &str) -> Result<&'a str, Fail> {
    let span = Span::of(ptr as *const u8, len, file)?;
    // SAFETY: checked span; readable for the duration of the call per the contract.
    let bytes: &[u8] = unsafe { slice(span) };
    std::str::from_utf8(bytes).map_err(|e| {
        fail(
            td_status::InvalidJson,
            std::format!("{file}: not UTF-8: {e}"),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------------------------

/// Checks a batch size against the model so that no size the sampler computes can overflow:
/// everything it lays out is at most this bound.
pub(super) fn check_batch(model: &Model, batch: usize) -> Result<(), Fail> {
    if batch == 0 {
        return Err(invalid("batch must be at least 1"));
    }
    let (c, h, w) = model.input_shape();
    let (c_out, _, _) = model.output_shape();
    // Model workspace + output + unconditional output + noise and SDE scratch (at most 4
    // images' worth) per image, plus one image of scratch.
    let per_image = model.workspace_len(1) + 2 * c_out * h * w + 4 * c * h * w;
    // A latent pipeline: the decoder's arena (overlapping the UNet's) and its image.
    let per_image = per_image
        + model.decoder().map_or(0, |d| {
            let (ic, ih, iw) = d.image_shape();
            d.workspace_len(1) + ic * ih * iw + c * h * w
        });
    let floats = per_image
        .checked_mul(batch)
        .and_then(|n| n.checked_add(c * h * w));
    match floats.and_then(|n| n.checked_mul(4)) {
        Some(bytes) if bytes <= isize::MAX as usize => Ok(()),
        _ => Err(fail(
            td_status::BadSize,
            std::format!("batch {batch} is too large to address"),
        )),
    }
}

/// Checks an exact-size output buffer.
pub(super) fn check_out_len(what: &str, len: usize, expected: usize) -> Result<(), Fail> {
    if len < expected {
        Err(fail(
            td_status::BufferTooSmall,
            std::format!("{what}: {len} floats, {expected} needed"),
        ))
    } else if len > expected {
        Err(fail(
            td_status::BadSize,
            std::format!("{what}: {len} floats, exactly {expected} expected"),
        ))
    } else {
        Ok(())
    }
}

pub(super) fn check_workspace_len(len: usize, needed: usize) -> Result<(), Fail> {
    if len < needed {
        Err(fail(
            td_status::BufferTooSmall,
            std::format!("workspace: {len} floats, {needed} needed"),
        ))
    } else {
        Ok(())
    }
}
