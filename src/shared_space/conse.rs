//! The ConSE space in the daemon: images join the text space through the ImageNet classifier
//! ([`VisionConse`], the vision worker's [`SemanticHook`]), and texts, zero-shot words and
//! query sentences are mapped with the same hubness correction ([`ConseSpace`]), so all of
//! them are compared with one cosine.

use std::sync::Arc;

use super::{Component, SemanticFromInputs, SemanticHook, SemanticItem, TextSpace};
use crate::encoders::{ClassifierEncoder, ItemResult, Modality};
use crate::pipeline::{Body, Purpose, Request};
use crate::semantic::SemanticSpace;

/// The ConSE space as the daemon's [`TextSpace`]: a text's vector is its embedding with the
/// space's correction (`semantic.centre × mean class-name embedding` subtracted), normalised;
/// a zero-shot word is embedded inside `semantic.template`, like the class names. `edgefuse
/// describe` goes through it too, so both score the same words alike.
pub struct ConseSpace(pub Arc<SemanticSpace>);

impl TextSpace for ConseSpace {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn text_vector(&self, embedding: &[f32]) -> Vec<f32> {
        self.0.text_vector(embedding).vector
    }

    fn word_text(&self, word: &str) -> String {
        self.0.config().prompt(word)
    }

    fn reasons(&self) -> usize {
        self.0.config().reasons
    }
}

/// The vision hook: classify each embedded image (one classifier batch per worker batch) and
/// place it in the space from its class probabilities.
pub struct VisionConse {
    pub classifier: Arc<ClassifierEncoder>,
    pub space: Arc<SemanticSpace>,
}

/// An image's semantic item from its class probabilities: the ConSE vector, and one part per
/// carrier class (most probable first) with its probability as weight and its name's vector in
/// the space, so zero-shot reasons can name the classes that carried a score. Pure.
pub fn image_item(space: &SemanticSpace, probabilities: &[f32]) -> SemanticItem {
    let v = space.image_vector(probabilities);
    let parts = v
        .carriers
        .iter()
        .filter_map(|c| {
            Some(Component {
                name: c.name.clone(),
                weight: probabilities.get(c.index).copied()?,
                vector: space.class_vector(c.index)?.to_vec(),
            })
        })
        .collect();
    SemanticItem {
        vector: v.vector,
        parts,
    }
}

/// Which requests of a batch the vision hook classifies: embedded images whose encoder
/// succeeded, with their bytes. Pure.
pub fn images_to_classify<'a>(
    batch: &'a [Request],
    results: &[ItemResult],
) -> Vec<(usize, &'a [u8])> {
    images_to_embed(batch)
        .into_iter()
        .filter(|(i, _)| matches!(results.get(*i), Some(Ok(_))))
        .collect()
}

/// The images of a batch that are to be embedded (and so classified), with their bytes,
/// before the encoder has run. Pure.
pub fn images_to_embed(batch: &[Request]) -> Vec<(usize, &[u8])> {
    batch
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match (&r.purpose, &r.body) {
            (Purpose::Embed, Body::Encoded(b)) if r.modality == Modality::Vision => {
                Some((i, b.as_ref()))
            }
            _ => None,
        })
        .collect()
}

impl VisionConse {
    fn classify_picked(
        &self,
        batch: &[Request],
        picked: &[(usize, &[u8])],
    ) -> Vec<Option<SemanticItem>> {
        let mut out: Vec<Option<SemanticItem>> = batch.iter().map(|_| None).collect();
        if picked.is_empty() {
            return out;
        }
        let images: Vec<&[u8]> = picked.iter().map(|(_, b)| *b).collect();
        for ((i, _), c) in picked.iter().zip(self.classifier.classify(&images)) {
            match c {
                Ok(c) => out[*i] = Some(image_item(&self.space, &c.probabilities)),
                // The image embedded but did not classify (it cannot differ in decoding, but
                // a model error must only cost the semantic vector).
                Err(e) => tracing::warn!(id = %batch[*i].id, "image not classified: {e}"),
            }
        }
        out
    }
}

impl SemanticHook for VisionConse {
    fn semantic(&self, batch: &[Request], results: &[ItemResult]) -> Vec<Option<SemanticItem>> {
        self.classify_picked(batch, &images_to_classify(batch, results))
    }

    // The classifier reads the image bytes, not the embedding: it can run beside DINOv2.
    fn inputs_only(&self) -> Option<&dyn SemanticFromInputs> {
        Some(self)
    }
}

impl SemanticFromInputs for VisionConse {
    fn semantic_from_inputs(&self, batch: &[Request]) -> Vec<Option<SemanticItem>> {
        self.classify_picked(batch, &images_to_embed(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoders::{l2_normalize, Embedding, Timings};
    use crate::error::InputError;
    use crate::semantic::SemanticConfig;
    use crate::types::Ticket;

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        l2_normalize(&mut v);
        v
    }

    fn space(centre: f32) -> SemanticSpace {
        let cfg = SemanticConfig {
            centre,
            top_t: 2,
            ..SemanticConfig::default()
        };
        SemanticSpace::new(
            "conse/test",
            ["espresso", "cup", "rocket"].map(String::from).to_vec(),
            vec![
                unit(&[1.0, 0.2, 0.0, 1.0]),
                unit(&[0.8, 0.6, 0.0, 1.0]),
                unit(&[0.0, 0.0, 1.0, 1.0]),
            ],
            &cfg,
        )
        .unwrap()
    }

    fn request(id: &str, modality: Modality, purpose: Purpose, body: Body) -> Request {
        Request {
            id: id.into(),
            modality,
            purpose,
            body,
            source: "mqtt".into(),
            group: "default".into(),
            topic: String::new(),
            response_topic: None,
            correlation: None,
            received: tokio::time::Instant::now(),
            ticket: Ticket::none(),
        }
    }

    fn ok() -> ItemResult {
        Ok(Embedding {
            vector: vec![1.0],
            timings: Timings::default(),
            blocks: None,
        })
    }

    #[test]
    fn an_image_item_names_its_carrier_classes_with_their_probabilities() {
        let s = space(1.0);
        let probs = [0.7, 0.2, 0.1];
        let item = image_item(&s, &probs);
        assert_eq!(item.vector, s.image_vector(&probs).vector);
        let names: Vec<&str> = item.parts.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["espresso", "cup"], "top_t = 2 carriers, best first");
        assert_eq!(item.parts[0].weight, 0.7);
        assert_eq!(item.parts[1].weight, 0.2);
        assert_eq!(item.parts[0].vector, s.class_vector(0).unwrap());
        let norm: f32 = item.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        // No probabilities: a zero vector and no parts, never a panic.
        let empty = image_item(&s, &[]);
        assert!(empty.parts.is_empty() && empty.vector.iter().all(|x| *x == 0.0));
    }

    #[test]
    fn the_text_space_applies_the_conse_correction() {
        let s = Arc::new(space(1.0));
        let t = ConseSpace(Arc::clone(&s));
        assert_eq!(t.name(), "conse/test");
        let e = unit(&[1.0, 0.2, 0.0, 1.0]);
        let v = t.text_vector(&e);
        assert_eq!(v, s.text_vector(&e).vector);
        assert_ne!(v, e, "centring changes the raw embedding");
        // With no correction a unit embedding maps to itself.
        let plain = ConseSpace(Arc::new(space(0.0)));
        let p = plain.text_vector(&e);
        assert!(p.iter().zip(&e).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn only_embedded_images_that_encoded_are_classified() {
        let img = || Body::Encoded(bytes::Bytes::from_static(b"\xff\xd8jpeg"));
        let batch = vec![
            request("a", Modality::Vision, Purpose::Embed, img()),
            request("b", Modality::Vision, Purpose::Enroll("cat".into()), img()),
            request("c", Modality::Vision, Purpose::Embed, img()),
            request("d", Modality::Text, Purpose::Embed, Body::Text("x".into())),
            request("e", Modality::Vision, Purpose::Embed, img()),
        ];
        let results = vec![ok(), ok(), Err(InputError::Empty), ok(), ok()];
        let picked: Vec<usize> = images_to_classify(&batch, &results)
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(picked, [0, 4]);
    }
}
