//! UpdateFeatures against the broker's fixed feature levels
//! (`net::versions::FEATURES`, which ApiVersions reports): asking for the
//! level already finalized succeeds, any other change gets
//! INVALID_UPDATE_VERSION with the reason, an unknown feature likewise, as
//! Kafka's controller answers an update it cannot make.
//!
//! Runs on the shard that received the request; no state, no I/O.

use kafka_protocol::messages::update_features_response::UpdatableFeatureResult;
use kafka_protocol::messages::{UpdateFeaturesRequest, UpdateFeaturesResponse};
use kafka_protocol::ResponseError;
use net::versions::FEATURES;

use super::str_bytes;

fn check(feature: &str, level: i16) -> Result<(), String> {
    let Some(&(_, lo, hi, finalized)) = FEATURES.iter().find(|(n, ..)| *n == feature) else {
        return Err(format!(
            "The controller does not support the given feature {feature}."
        ));
    };
    if level == finalized {
        return Ok(());
    }
    if level < 1 {
        return Err(format!(
            "{feature} cannot be removed: this broker implements it at level {finalized}."
        ));
    }
    if level > hi {
        return Err(format!(
            "Invalid update version {level} for feature {feature}: this broker supports levels {lo} to {hi}."
        ));
    }
    Err(format!(
        "{feature} is fixed at level {finalized} on this broker; it cannot change to {level}."
    ))
}

pub fn update_features(req: UpdateFeaturesRequest, version: i16) -> UpdateFeaturesResponse {
    let mut resp = UpdateFeaturesResponse::default();
    let results: Vec<(String, Result<(), String>)> = req
        .feature_updates
        .iter()
        .map(|u| {
            (
                u.feature.to_string(),
                check(&u.feature, u.max_version_level),
            )
        })
        .collect();
    if version >= 2 {
        // v2 reports only the first failure, at the top level.
        if let Some((_, Err(m))) = results.iter().find(|(_, r)| r.is_err()) {
            resp.error_code = ResponseError::InvalidUpdateVersion.code();
            resp.error_message = Some(str_bytes(m));
        }
        return resp;
    }
    resp.results = results
        .into_iter()
        .map(|(f, r)| {
            let mut out = UpdatableFeatureResult::default().with_feature(str_bytes(&f));
            if let Err(m) = r {
                out.error_code = ResponseError::InvalidUpdateVersion.code();
                out.error_message = Some(str_bytes(&m));
            }
            out
        })
        .collect();
    resp
}
