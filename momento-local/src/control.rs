//! `control_client.ScsControl`: creating, listing, flushing and deleting
//! caches. Only API keys may call it, as on Momento.

use std::sync::Arc;

use momento_protos::control_client::{
    Cache, CacheLimits, CreateCacheRequest, CreateCacheResponse, CreateIndexRequest,
    CreateIndexResponse, CreateSigningKeyRequest, CreateSigningKeyResponse, DeleteCacheRequest,
    DeleteCacheResponse, DeleteIndexRequest, DeleteIndexResponse, FlushCacheRequest,
    FlushCacheResponse, ListCachesRequest, ListCachesResponse, ListIndexesRequest,
    ListIndexesResponse, ListSigningKeysRequest, ListSigningKeysResponse, RevokeSigningKeyRequest,
    RevokeSigningKeyResponse, TopicLimits, scs_control_server::ScsControl,
};
use tonic::{Request, Response, Status};

use super::{Shared, auth::Caller};

/// `control_client.ScsControl`.
#[derive(Debug)]
pub(super) struct ControlService {
    shared: Arc<Shared>,
}

impl ControlService {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The limits a cache reports; 0 means not limited here.
    fn limits(&self) -> (CacheLimits, TopicLimits) {
        let kib = |bytes: usize| u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        let limits = &self.shared.limits;
        (
            CacheLimits {
                max_traffic_rate: 0,
                max_throughput_kbps: 0,
                max_item_size_kb: kib(limits.max_item_bytes),
                max_ttl_seconds: 0,
            },
            TopicLimits {
                max_publish_rate: 0,
                max_subscription_count: 0,
                max_publish_message_size_kb: kib(limits.max_message_bytes),
            },
        )
    }
}

#[tonic::async_trait]
impl ScsControl for ControlService {
    async fn create_cache(
        &self,
        request: Request<CreateCacheRequest>,
    ) -> Result<Response<CreateCacheResponse>, Status> {
        Caller::of(&request)?.require_api_key("create caches")?;
        self.shared.caches.create(&request.get_ref().cache_name)?;
        tracing::debug!(cache = %request.get_ref().cache_name, "momento-local cache created");
        Ok(Response::new(CreateCacheResponse {}))
    }

    async fn delete_cache(
        &self,
        request: Request<DeleteCacheRequest>,
    ) -> Result<Response<DeleteCacheResponse>, Status> {
        Caller::of(&request)?.require_api_key("delete caches")?;
        self.shared.caches.delete(&request.get_ref().cache_name)?;
        tracing::debug!(cache = %request.get_ref().cache_name, "momento-local cache deleted");
        Ok(Response::new(DeleteCacheResponse {}))
    }

    async fn list_caches(
        &self,
        request: Request<ListCachesRequest>,
    ) -> Result<Response<ListCachesResponse>, Status> {
        Caller::of(&request)?.require_api_key("list caches")?;
        let (cache_limits, topic_limits) = self.limits();
        let cache = self
            .shared
            .caches
            .list()
            .iter()
            .map(|cache| Cache {
                cache_name: cache.name.clone(),
                cache_limits: Some(cache_limits),
                topic_limits: Some(topic_limits),
                cache_id: cache.id.clone(),
            })
            .collect();
        // Every cache fits in one page.
        Ok(Response::new(ListCachesResponse {
            cache,
            next_token: String::new(),
        }))
    }

    async fn flush_cache(
        &self,
        request: Request<FlushCacheRequest>,
    ) -> Result<Response<FlushCacheResponse>, Status> {
        Caller::of(&request)?.require_api_key("flush caches")?;
        self.shared
            .caches
            .get(&request.get_ref().cache_name)?
            .flush();
        Ok(Response::new(FlushCacheResponse {}))
    }

    unimplemented_rpcs! { "control_client.ScsControl":
        create_signing_key(CreateSigningKeyRequest) -> CreateSigningKeyResponse;
        revoke_signing_key(RevokeSigningKeyRequest) -> RevokeSigningKeyResponse;
        list_signing_keys(ListSigningKeysRequest) -> ListSigningKeysResponse;
        create_index(CreateIndexRequest) -> CreateIndexResponse;
        delete_index(DeleteIndexRequest) -> DeleteIndexResponse;
        list_indexes(ListIndexesRequest) -> ListIndexesResponse;
    }
}
