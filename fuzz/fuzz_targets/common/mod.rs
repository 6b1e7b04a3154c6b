//! Shared input shaping of the decoder targets.
//!
//! An input is `[mode][payload...]`. Mode below 128: the payload is the decoder's input as is
//! (anything at all). Mode 128 and above: the payload edits a valid encoding, template number
//! `mode & 0x3f` of the target's list: every 3 bytes `(offset hi, offset lo, value)` overwrite
//! the byte at `offset` (or append `value` past the end), and 1 or 2 bytes left over drop that
//! many times 8 bytes from the end. Bit `0x40` of such a mode asks the target to repair the
//! length fields of its header, so edits reach the body's decoder. Templates take the fuzzer
//! deep into every message kind at once, without a stored corpus.

/// The decoder input for `data` (see the module documentation) and whether to repair lengths.
pub fn shape(data: &[u8], templates: &[Vec<u8>]) -> (Vec<u8>, bool) {
    let Some((&mode, rest)) = data.split_first() else {
        return (Vec::new(), false);
    };
    if mode < 128 || templates.is_empty() {
        return (rest.to_vec(), false);
    }
    let mut out = templates[usize::from(mode & 0x3f) % templates.len()].clone();
    let mut chunks = rest.chunks_exact(3);
    for c in &mut chunks {
        let at = usize::from(u16::from_be_bytes([c[0], c[1]]));
        match out.get_mut(at) {
            Some(b) => *b = c[2],
            None => out.push(c[2]),
        }
    }
    let cut = 8 * chunks.remainder().len();
    out.truncate(out.len().saturating_sub(cut));
    (out, mode & 0x40 != 0)
}
