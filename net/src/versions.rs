//! The API versions this broker implements, and the ApiVersions response.
//!
//! Only versions whose every field the broker honours are listed: a client
//! picks the highest version both sides know, so an advertised version that
//! is only half done breaks real clients. Sans-IO.

use kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

/// `(api, min, max)` for every API the broker serves.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    // Produce v10/v11 and Fetch v12+/v16 carry KIP-951's leader hints on
    // NOT_LEADER_OR_FOLLOWER; Produce v13 and Fetch v13+ name topics by id;
    // Produce v12+ adds a transactional batch's partition to its
    // transaction (transactions v2). Fetch v15 (replica state), v17 (directory id) and v18
    // (the replica's high watermark) only matter to followers. ListOffsets v8/v9 add KIP-1005's timestamps, v10
    // a timeout for tiered reads (none here), v11 KIP-1023's earliest
    // pending upload (-1, as Kafka without remote storage).
    (ApiKey::Produce, 3, 13),
    (ApiKey::Fetch, 4, 18),
    (ApiKey::ListOffsets, 1, 11),
    // v13 adds a top-level error code (KIP-1102's REBOOTSTRAP_REQUIRED,
    // which nothing here needs: always 0).
    (ApiKey::Metadata, 0, 13),
    // KIP-320's truncation check: the epochs come from the metadata
    // image (broker/src/metadata/epochs.rs). v0 and v1 are gone in Kafka 4.
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    // v4 (KAFKA-17011): supported features whose lowest level is 0 are
    // listed; below v4 they are left out, as Kafka leaves them out. v5
    // (KIP-1242): the client may name the cluster and node it expects.
    (ApiKey::ApiVersions, 0, 5),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    // v1 checks the endpoint type, v2 lists fenced nodes when asked.
    (ApiKey::DescribeCluster, 0, 2),
    // v5 may answer TRANSACTION_ABORTABLE (never needed here); v6 knows
    // the share key type, refused as Kafka refuses it without share groups.
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    // v9 carries KIP-848 member epochs (checked against consumer groups);
    // v10 names topics by id (UNKNOWN_TOPIC_ID for an id we do not know).
    (ApiKey::OffsetCommit, 2, 10),
    (ApiKey::OffsetFetch, 1, 10),
    (ApiKey::ListGroups, 0, 5),
    // v6 (KIP-1043): GROUP_ID_NOT_FOUND, with a message, for no classic group.
    (ApiKey::DescribeGroups, 0, 6),
    // v3 adds an error message, which Kafka 4.4 sets only for streams
    // groups' topology errors (none here): null.
    (ApiKey::DeleteGroups, 0, 3),
    // KIP-848 consumer groups (broker/src/group/consumer.rs); v1 adds
    // client-chosen member ids and regex subscriptions.
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    // KIP-932 share groups (broker/src/group/share.rs, broker/src/share):
    // v1 is the first production version (v0 was early access, which
    // Kafka 4.1 dropped). ShareFetch and ShareAcknowledge v2 renew locks
    // (KIP-1222) and choose an acquire mode (KIP-1206: records are always
    // acquired one by one here, within MaxRecords, which both modes allow).
    // Read and WriteShareGroupState are what leaders send the group's
    // coordinator; Initialize, Delete and ReadShareGroupStateSummary
    // complete Kafka's share-coordinator set. Their v1 and
    // DescribeShareGroupOffsets v1 carry KIP-1226's delivery-complete
    // count and lag.
    (ApiKey::ShareGroupHeartbeat, 1, 1),
    (ApiKey::ShareGroupDescribe, 1, 1),
    (ApiKey::ShareFetch, 1, 2),
    (ApiKey::ShareAcknowledge, 1, 2),
    (ApiKey::InitializeShareGroupState, 0, 0),
    (ApiKey::ReadShareGroupState, 0, 0),
    (ApiKey::WriteShareGroupState, 0, 1),
    (ApiKey::DeleteShareGroupState, 0, 0),
    (ApiKey::ReadShareGroupStateSummary, 0, 1),
    (ApiKey::DescribeShareGroupOffsets, 0, 1),
    (ApiKey::AlterShareGroupOffsets, 0, 0),
    (ApiKey::DeleteShareGroupOffsets, 0, 0),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    // The legacy form: replaces a topic's configs (librdkafka's
    // rd_kafka_AlterConfigs, confluent-kafka's alter_configs).
    (ApiKey::AlterConfigs, 0, 2),
    // KIP-890 part 1: InitProducerId 5, AddPartitionsToTxn 5,
    // AddOffsetsToTxn 4, EndTxn 4 and TxnOffsetCommit 4 only let the client
    // accept TRANSACTION_ABORTABLE (answered by an AddPartitionsToTxn v5
    // verification of a partition outside the transaction). Part 2
    // (transaction.version 2, broker/src/txn/implicit.rs): EndTxn 5 bumps
    // the epoch at every end, TxnOffsetCommit 5 and Produce 12 add their
    // partitions themselves; TxnOffsetCommit 6 names topics by id
    // (UNKNOWN_TOPIC_ID for an id we do not know). InitProducerId 6 is two-phase commit
    // (KIP-939). AddPartitionsToTxn v4+ is the batched form brokers use.
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::AddPartitionsToTxn, 0, 5),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 5),
    (ApiKey::TxnOffsetCommit, 0, 6),
    (ApiKey::DescribeTransactions, 0, 0),
    // v2 filters by a transactional id regular expression (KIP-1152).
    (ApiKey::ListTransactions, 0, 2),
    // Sent by admin clients (abortTransaction) to a partition's leader,
    // and by our coordinators to other brokers. v2 (KIP-1228) carries the
    // transaction version: a v2 marker's epoch must pass the producer's.
    (ApiKey::WriteTxnMarkers, 1, 2),
    // Answered as Kafka answers them here (broker/src/handlers/admin.rs):
    // no authorizer, one replica per partition, no reassignments.
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::ElectLeaders, 0, 2),
    // v1: allow_replication_factor_change (KIP-860).
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::DescribeTopicPartitions, 0, 0),
    // v5 adds is_cordoned (KIP-1066): never, here.
    (ApiKey::DescribeLogDirs, 1, 5),
    (ApiKey::ListConfigResources, 0, 1),
    (ApiKey::DescribeQuorum, 0, 2),
    // The quorum is static (`controller_quorum_voters`, `kraft.version`
    // 0): voter changes are refused as Kafka refuses them there.
    (ApiKey::AddRaftVoter, 0, 1),
    (ApiKey::RemoveRaftVoter, 0, 0),
    (ApiKey::AlterReplicaLogDirs, 1, 2),
    // Through the controller: a fenced broker leaves the registry.
    (ApiKey::UnregisterBroker, 0, 0),
    // Delegation tokens answered as Kafka answers them without a token
    // secret (broker/src/handlers/auth.rs); SCRAM credentials kept in the
    // metadata and used by SASL/SCRAM (broker/src/sasl.rs); fixed
    // feature levels (FEATURES, broker/src/handlers/features.rs). Client
    // quotas are kept and byte rates enforced (broker/src/handlers/quotas.rs,
    // quota.rs).
    (ApiKey::CreateDelegationToken, 1, 3),
    (ApiKey::RenewDelegationToken, 1, 2),
    (ApiKey::ExpireDelegationToken, 1, 2),
    (ApiKey::DescribeDelegationToken, 1, 3),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    (ApiKey::DescribeClientQuotas, 0, 1),
    // SASL on a SASL_PLAINTEXT listener (net/src/sasl.rs, before any other
    // request); on a PLAINTEXT one, or once authenticated, ILLEGAL_SASL_STATE
    // as in Kafka.
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::AlterClientQuotas, 0, 1),
    (ApiKey::UpdateFeatures, 0, 2),
    // The static quorum's voters are the controllers: none registers or
    // leaves (broker/src/handlers/admin.rs). Last, so the fuzz corpus's
    // inputs (which pick an API by its index here) keep their meaning.
    (ApiKey::UnregisterController, 0, 0),
    // KIP-1071 streams groups (broker/src/group/streams.rs). v1 adds the
    // heartbeat's TopologyDescriptionRequired (always false here) and
    // Describe's description status (NOT_STORED when asked for): like
    // Kafka 4.4 without a topology-description plugin, the broker keeps no
    // descriptions and answers StreamsGroupTopologyDescriptionUpdate with
    // Kafka's UNSUPPORTED_VERSION and message.
    (ApiKey::StreamsGroupHeartbeat, 0, 1),
    (ApiKey::StreamsGroupDescribe, 0, 1),
    (ApiKey::StreamsGroupTopologyDescriptionUpdate, 0, 0),
];

/// Feature flags as ApiVersions v3+ reports them: `(name, supported min,
/// supported max, finalized level)`. The levels are fixed: this broker
/// implements exactly these, and UpdateFeatures can only confirm them.
///
/// * `group.version` 1: KIP-848 consumer groups (ConsumerGroupHeartbeat).
/// * `transaction.version` 2: transactions v2 (KIP-890 part 2), which
///   clients use only when it is finalized at 2.
/// * `share.version` 1: KIP-932 share groups (Kafka 4.4's level 2 adds
///   dead-letter queues, KIP-1191, not served here).
/// * `streams.version` 1: KIP-1071 streams groups (StreamsGroupHeartbeat).
pub const FEATURES: &[(&str, i16, i16, i16)] = &[
    ("group.version", 0, 1, 1),
    ("transaction.version", 0, 2, 2),
    ("share.version", 0, 1, 1),
    ("streams.version", 0, 1, 1),
];

/// The supported range of `api`, if the broker serves it at all.
pub fn supported_range(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|&(_, lo, hi)| (lo, hi))
}

pub fn is_supported(api: ApiKey, version: i16) -> bool {
    matches!(supported_range(api), Some((lo, hi)) if (lo..=hi).contains(&version))
}

/// The ApiVersions response listing every supported range, with `error_code`
/// (0, or `UNSUPPORTED_VERSION` when answering a version we do not know).
pub fn api_versions_response(error_code: i16, version: i16) -> ApiVersionsResponse {
    let api_keys = SUPPORTED
        .iter()
        .map(|&(k, lo, hi)| {
            ApiVersion::default()
                .with_api_key(k as i16)
                .with_min_version(lo)
                .with_max_version(hi)
        })
        .collect();
    // Older clients fail to parse a supported range starting at 0
    // (KAFKA-17011): before v4 such a feature is left out, as in Kafka.
    let supported = FEATURES
        .iter()
        .filter(|&&(_, lo, _, _)| version >= 4 || lo > 0)
        .map(|&(name, lo, hi, _)| {
            SupportedFeatureKey::default()
                .with_name(name.to_string().into())
                .with_min_version(lo)
                .with_max_version(hi)
        })
        .collect();
    let finalized = FEATURES
        .iter()
        .map(|&(name, _, _, level)| {
            FinalizedFeatureKey::default()
                .with_name(name.to_string().into())
                .with_min_version_level(level)
                .with_max_version_level(level)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(api_keys)
        .with_supported_features(supported)
        .with_finalized_features_epoch(0)
        .with_finalized_features(finalized)
}

/// The answer to an ApiVersions request of a version we do not serve: a
/// v0 response with UNSUPPORTED_VERSION and the ranges we do serve
/// (KIP-511), so the client retries with one of them.
pub fn unsupported_api_versions(
    correlation_id: i32,
) -> Result<bytes::Bytes, crate::codec::EncodeError> {
    let body = kafka_protocol::messages::ResponseKind::ApiVersions(api_versions_response(
        kafka_protocol::ResponseError::UnsupportedVersion.code(),
        0,
    ));
    crate::codec::encode_response(ApiKey::ApiVersions, 0, correlation_id, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_versions_are_within_the_codec() {
        for &(k, lo, hi) in SUPPORTED {
            let valid = k.valid_versions();
            assert!(
                lo >= valid.min && hi <= valid.max,
                "{k:?} {lo}..{hi} vs {valid:?}"
            );
            assert!(lo <= hi);
        }
    }

    #[test]
    fn features_starting_at_level_0_only_from_v4() {
        let names = |v| {
            api_versions_response(0, v)
                .supported_features
                .iter()
                .map(|f| (f.name.to_string(), f.min_version))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(4),
            vec![
                ("group.version".to_string(), 0),
                ("transaction.version".to_string(), 0),
                ("share.version".to_string(), 0),
                ("streams.version".to_string(), 0)
            ]
        );
        assert!(names(3).is_empty());
        // Finalized levels are listed whatever the version.
        assert_eq!(api_versions_response(0, 3).finalized_features.len(), 4);
    }

    #[test]
    fn ranges() {
        assert!(is_supported(ApiKey::Produce, 13));
        assert!(!is_supported(ApiKey::Produce, 2));
        assert!(is_supported(ApiKey::InitProducerId, 5));
        assert!(!is_supported(ApiKey::InitProducerId, 6));
        // Transactions v2 (KIP-890 part 2).
        assert!(is_supported(ApiKey::EndTxn, 5));
        assert!(!is_supported(ApiKey::EndTxn, 6));
        assert!(is_supported(ApiKey::JoinGroup, 4));
        // OffsetCommit / OffsetFetch v10 name topics by id.
        assert!(is_supported(ApiKey::OffsetCommit, 10));
        assert!(!is_supported(ApiKey::OffsetCommit, 11));
        assert!(is_supported(ApiKey::OffsetFetch, 10));
        assert_eq!(api_versions_response(0, 3).api_keys.len(), SUPPORTED.len());
    }
}

/// The versions patched into the vendored crate (net/vendor/README.md):
/// each new field survives an encode and decode at the version that has
/// it, and is dropped (or refused, when it is not ignorable and set) below.
#[cfg(test)]
mod patched_messages {
    use bytes::BytesMut;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Decodable, Encodable};

    fn round_trip<T: Encodable + Decodable>(m: &T, version: i16) -> T {
        let mut buf = BytesMut::new();
        m.encode(&mut buf, version).expect("encodes");
        let mut bytes = buf.freeze();
        let back = T::decode(&mut bytes, version).expect("decodes");
        assert!(bytes.is_empty(), "bytes left over at v{version}");
        back
    }

    /// Added whole (Kafka 4.4's UnregisterController*.json): the bytes are
    /// Kafka's, as its generated classes write them.
    #[test]
    fn unregister_controller_v0() {
        use kafka_protocol::messages::ApiKey;
        let req = UnregisterControllerRequest::default().with_controller_id(4242);
        let mut buf = BytesMut::new();
        req.encode(&mut buf, 0).unwrap();
        // int32 id, then no tagged fields.
        assert_eq!(&buf[..], &[0, 0, 0x10, 0x92, 0]);
        assert_eq!(round_trip(&req, 0), req);
        assert!(req.encode(&mut BytesMut::new(), 1).is_err());
        let decoded =
            RequestKind::decode(ApiKey::UnregisterController, &mut buf.freeze(), 0).unwrap();
        assert_eq!(decoded, RequestKind::UnregisterController(req));
        assert_eq!(ApiKey::try_from(94), Ok(ApiKey::UnregisterController));
        assert_eq!(ApiKey::UnregisterController.request_header_version(0), 2);
        assert_eq!(ApiKey::UnregisterController.response_header_version(0), 1);

        let mut resp = UnregisterControllerResponse::default().with_error_code(136);
        resp.error_message = Some("x".into());
        let mut buf = BytesMut::new();
        resp.encode(&mut buf, 0).unwrap();
        // throttle, error code, compact nullable string "x", no tags.
        assert_eq!(&buf[..], &[0, 0, 0, 0, 0, 136, 2, b'x', 0]);
        assert_eq!(round_trip(&resp, 0), resp);
        resp.error_message = None;
        assert_eq!(round_trip(&resp, 0), resp);
    }

    fn hex(m: &impl Encodable, version: i16) -> String {
        let mut buf = BytesMut::new();
        m.encode(&mut buf, version).expect("encodes");
        buf.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The streams-group messages (KIP-1071, Kafka 4.4) are generated by
    /// kafka-protocol's own code generator from Kafka 4.4's JSON. The
    /// expected bytes are what Kafka 4.4's generated Java classes write for
    /// the same messages (`MessageUtil.toByteBufferAccessor`).
    #[test]
    fn streams_group_heartbeat_matches_kafka() {
        use streams_group_heartbeat_request as q;
        use streams_group_heartbeat_response as a;
        let req = StreamsGroupHeartbeatRequest::default()
            .with_group_id(GroupId("app".into()))
            .with_member_id("m1".into())
            .with_member_epoch(0)
            .with_endpoint_information_epoch(0)
            .with_instance_id(None)
            .with_rack_id(None)
            .with_rebalance_timeout_ms(300000)
            .with_topology(Some(
                q::Topology::default()
                    .with_epoch(1)
                    .with_subtopologies(vec![q::Subtopology::default()
                        .with_subtopology_id("0".into())
                        .with_source_topics(vec![TopicName("in".into())])
                        .with_repartition_sink_topics(vec![TopicName("app-x-repartition".into())])
                        .with_state_changelog_topics(vec![q::TopicInfo::default()
                            .with_name(TopicName("app-s-changelog".into()))
                            .with_topic_configs(vec![q::KeyValue::default()
                                .with_key("cleanup.policy".into())
                                .with_value("compact".into())])])
                        .with_copartition_groups(vec![
                            q::CopartitionGroup::default().with_source_topics(vec![0])
                        ])]),
            ))
            .with_active_tasks(Some(vec![q::TaskIds::default()
                .with_subtopology_id("0".into())
                .with_partitions(vec![0, 1])]))
            .with_standby_tasks(Some(vec![]))
            .with_warmup_tasks(Some(vec![]))
            .with_process_id(Some("p".into()))
            .with_user_endpoint(Some(
                q::Endpoint::default().with_host("h".into()).with_port(8080),
            ))
            .with_client_tags(Some(vec![]))
            .with_task_offsets(Some(vec![q::TaskOffset::default()
                .with_subtopology_id("0".into())
                .with_partition(1)
                .with_offset(42)]))
            .with_task_end_offsets(None)
            .with_shutdown_application(false);
        let want = "04617070036d3100000000000000000000000493e001000000010202300203696e01021061\
                    70702d732d6368616e67656c6f67000000000000020f636c65616e75702e706f6c696379\
                    08636f6d70616374000002126170702d782d7265706172746974696f6e010202000001010000\
                    0002023003000000000000000100010102700102681f9000010202300000000100000000000000\
                    2a00000000";
        for v in [0, 1] {
            assert_eq!(hex(&req, v), want, "request v{v}");
            assert_eq!(round_trip(&req, v), req);
        }

        let mut resp = StreamsGroupHeartbeatResponse::default()
            .with_error_message(None)
            .with_member_id("m1".into())
            .with_member_epoch(3)
            .with_heartbeat_interval_ms(5000)
            .with_task_offset_interval_ms(60000)
            .with_acceptable_recovery_lag(10000)
            .with_status(Some(vec![a::Status::default()
                .with_status_code(1)
                .with_status_detail("d".into())]))
            .with_active_tasks(Some(vec![a::TaskIds::default()
                .with_subtopology_id("0".into())
                .with_partitions(vec![0])]))
            .with_standby_tasks(Some(vec![]))
            .with_warmup_tasks(Some(vec![]))
            .with_partitions_by_user_endpoint(None);
        // v0 has the int32 AcceptableRecoveryLagLegacy (Kafka left it 0), v1
        // the int64 AcceptableRecoveryLag and TopologyDescriptionRequired.
        assert_eq!(
            hex(&resp, 0),
            "00000000000000036d310000000300001388000000000000ea6002010264000202300200000000000101000000000000"
        );
        assert_eq!(
            hex(&resp, 1),
            "00000000000000036d3100000003000013880000ea6000000000000027100201026400020230020000000000010100000000000000"
        );
        resp.topology_description_required = true;
        assert_eq!(
            hex(&resp, 1),
            "00000000000000036d3100000003000013880000ea6000000000000027100201026400020230020000000000010101000000000000"
        );
        assert_eq!(round_trip(&resp, 1), resp);
    }

    #[test]
    fn streams_group_describe_and_topology_update_round_trip() {
        use kafka_protocol::messages::ApiKey;
        let req = StreamsGroupDescribeRequest::default()
            .with_group_ids(vec![GroupId("app".into())])
            .with_include_authorized_operations(true);
        let group = streams_group_describe_response::DescribedGroup::default()
            .with_group_id(GroupId("app".into()))
            .with_group_state("Stable".into())
            .with_group_epoch(4);
        let resp = StreamsGroupDescribeResponse::default().with_groups(vec![group]);
        for v in [0, 1] {
            assert_eq!(round_trip(&req, v), req);
            assert_eq!(round_trip(&resp, v), resp);
        }
        let update = StreamsGroupTopologyDescriptionUpdateRequest::default();
        assert_eq!(round_trip(&update, 0), update);
        for (key, api) in [
            (88, ApiKey::StreamsGroupHeartbeat),
            (89, ApiKey::StreamsGroupDescribe),
            (93, ApiKey::StreamsGroupTopologyDescriptionUpdate),
        ] {
            assert_eq!(ApiKey::try_from(key), Ok(api));
            assert_eq!(api.request_header_version(0), 2);
        }
    }

    #[test]
    fn share_fetch_and_acknowledge_v2() {
        let batch = share_fetch_request::AcknowledgementBatch::default()
            .with_first_offset(3)
            .with_last_offset(5)
            .with_acknowledge_types(vec![4]);
        let req = ShareFetchRequest::default()
            .with_member_id(Some("m".into()))
            .with_share_session_epoch(2)
            .with_max_records(10)
            .with_share_acquire_mode(1)
            .with_is_renew_ack(true)
            .with_topics(vec![share_fetch_request::FetchTopic::default()
                .with_partitions(vec![
                    share_fetch_request::FetchPartition::default()
                        .with_partition_index(1)
                        .with_acknowledgement_batches(vec![batch]),
                ])]);
        assert_eq!(round_trip(&req, 2), req);
        // v1 has neither field: a renew cannot be sent there.
        let mut buf = BytesMut::new();
        assert!(req.encode(&mut buf, 1).is_err());
        let plain = req.clone().with_is_renew_ack(false);
        assert_eq!(round_trip(&plain, 1), plain.with_share_acquire_mode(0));

        let ack = ShareAcknowledgeRequest::default()
            .with_member_id(Some("m".into()))
            .with_share_session_epoch(3)
            .with_is_renew_ack(true);
        assert_eq!(round_trip(&ack, 2), ack);
        let resp = ShareAcknowledgeResponse::default().with_acquisition_lock_timeout_ms(15_000);
        assert_eq!(round_trip(&resp, 2), resp);
        assert_eq!(round_trip(&resp, 1).acquisition_lock_timeout_ms, 0);
    }

    #[test]
    fn kip_1226_counts_and_lag_v1() {
        let write = WriteShareGroupStateRequest::default().with_topics(vec![
            write_share_group_state_request::WriteStateData::default().with_partitions(vec![
                write_share_group_state_request::PartitionData::default()
                    .with_start_offset(40)
                    .with_delivery_complete_count(7),
            ]),
        ]);
        assert_eq!(round_trip(&write, 1), write);
        let v0 = round_trip(&write, 0);
        assert_eq!(v0.topics[0].partitions[0].delivery_complete_count, -1);
        assert_eq!(v0.topics[0].partitions[0].start_offset, 40);

        let summary = ReadShareGroupStateSummaryResponse::default().with_results(vec![
            read_share_group_state_summary_response::ReadStateSummaryResult::default()
                .with_partitions(vec![
                    read_share_group_state_summary_response::PartitionResult::default()
                        .with_start_offset(40)
                        .with_delivery_complete_count(7),
                ]),
        ]);
        assert_eq!(round_trip(&summary, 1), summary);

        use describe_share_group_offsets_response::*;
        let lag = DescribeShareGroupOffsetsResponse::default().with_groups(vec![
            DescribeShareGroupOffsetsResponseGroup::default().with_topics(vec![
                DescribeShareGroupOffsetsResponseTopic::default().with_partitions(vec![
                    DescribeShareGroupOffsetsResponsePartition::default()
                        .with_start_offset(8)
                        .with_lag(12),
                ]),
            ]),
        ]);
        assert_eq!(round_trip(&lag, 1), lag);
        let v0 = round_trip(&lag, 0);
        assert_eq!(v0.groups[0].topics[0].partitions[0].lag, -1);
    }

    #[test]
    fn add_raft_voter_v1() {
        let req = AddRaftVoterRequest::default()
            .with_voter_id(7)
            .with_ack_when_committed(false);
        assert_eq!(round_trip(&req, 1), req);
        let mut buf = BytesMut::new();
        assert!(
            req.encode(&mut buf, 0).is_err(),
            "v0 cannot carry a false ack"
        );
        let default = AddRaftVoterRequest::default().with_voter_id(7);
        assert!(default.ack_when_committed);
        assert_eq!(round_trip(&default, 0), default);
    }
}
