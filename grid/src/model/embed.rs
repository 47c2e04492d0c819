//! The built-in embedder (architecture.md §2): deterministic feature hashing of a text's character
//! trigrams and words into a fixed dimension, L2-normalised, so cosine similarity measures
//! shared spelling and vocabulary. No model is downloaded; clients that want semantic vectors
//! supply their own.

use crate::limits;

/// Embeds `text` into `dim` dimensions (clamped to 1..=`VECTOR_DIM_MAX`). Empty or
/// feature-less text gives the zero vector, which is similar to nothing.
pub fn embed(text: &str, dim: usize) -> Vec<f32> {
    let dim = dim.clamp(1, limits::VECTOR_DIM_MAX);
    let mut v = vec![0f32; dim];
    // Words are runs of letters and digits: "Eiffel_Tower" and "wrought-iron" are two words each.
    let norm: String = text.to_lowercase().split(|c: char| !c.is_alphanumeric()).collect::<Vec<_>>().join(" ");
    let mut add = |feature: &[u8], weight: f32| {
        let h = xxhash_rust::xxh3::xxh3_64(feature);
        // One bit of the hash picks the sign, so unrelated features cancel out on average.
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        v[(h % dim as u64) as usize] += sign * weight;
    };
    for word in norm.split(' ').filter(|w| !w.is_empty()) {
        add(word.as_bytes(), 2.0);
        let padded: Vec<char> = format!(" {word} ").chars().collect();
        for tri in padded.windows(3) {
            let s: String = tri.iter().collect();
            add(s.as_bytes(), 1.0);
        }
    }
    let len = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if len > 0.0 {
        v.iter_mut().for_each(|x| *x /= len);
    }
    v
}

/// Cosine similarity; 0 when either vector is zero or the lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similar_texts_score_higher_than_unrelated_ones() {
        let d = limits::VECTOR_DIM_DEFAULT;
        let paris = embed("Paris, the capital of France", d);
        assert_eq!(paris.len(), d);
        assert!((paris.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4, "unit length");
        assert_eq!(paris, embed("Paris, the capital of France", d), "deterministic");
        let near = cosine(&paris, &embed("capital of france", d));
        let far = cosine(&paris, &embed("photosynthesis in green leaves", d));
        assert!(near > 0.5 && far < 0.2 && near > far, "near {near}, far {far}");
        assert!((cosine(&paris, &paris) - 1.0).abs() < 1e-4);
    }

    #[test]
    fn edge_cases_do_not_panic() {
        assert!(embed("", 8).iter().all(|x| *x == 0.0));
        assert_eq!(embed("x", 0).len(), 1);
        assert_eq!(embed("x", usize::MAX).len(), limits::VECTOR_DIM_MAX);
        assert_eq!(cosine(&[1.0], &[1.0, 2.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 2.0]), 0.0);
        let _ = embed(&"é🙂".repeat(10_000), 16);
    }
}
