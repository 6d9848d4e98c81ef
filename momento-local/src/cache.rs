//! Caches: named namespaces holding scalar items with TTLs, and the topics
//! published in them; and the `Scs` service over their items.
//!
//! Data calls name their cache in the `cache` header, as every Momento SDK
//! sends it. Items expire lazily when read and in the periodic sweep.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use momento_protos::cache_client::{
    DeleteRequest, DeleteResponse, ECacheResult, GetBatchRequest, GetRequest, GetResponse,
    IncrementRequest, IncrementResponse, ItemGetTtlRequest, ItemGetTtlResponse, KeysExistRequest,
    KeysExistResponse, SetBatchRequest, SetRequest, SetResponse, UpdateTtlRequest,
    UpdateTtlResponse, item_get_ttl_response, scs_server::Scs, update_ttl_request,
    update_ttl_response,
};
use momento_protos::cache_client::{
    DictionaryDeleteRequest, DictionaryDeleteResponse, DictionaryFetchRequest,
    DictionaryFetchResponse, DictionaryGetRequest, DictionaryGetResponse,
    DictionaryIncrementRequest, DictionaryIncrementResponse, DictionaryLengthRequest,
    DictionaryLengthResponse, DictionarySetRequest, DictionarySetResponse, GetWithHashRequest,
    GetWithHashResponse, ItemGetTypeRequest, ItemGetTypeResponse, ListConcatenateBackRequest,
    ListConcatenateBackResponse, ListConcatenateFrontRequest, ListConcatenateFrontResponse,
    ListEraseRequest, ListEraseResponse, ListFetchRequest, ListFetchResponse, ListLengthRequest,
    ListLengthResponse, ListPopBackRequest, ListPopBackResponse, ListPopFrontRequest,
    ListPopFrontResponse, ListPushBackRequest, ListPushBackResponse, ListPushFrontRequest,
    ListPushFrontResponse, ListRemoveRequest, ListRemoveResponse, ListRetainRequest,
    ListRetainResponse, SetContainsRequest, SetContainsResponse, SetDifferenceRequest,
    SetDifferenceResponse, SetFetchRequest, SetFetchResponse, SetIfHashRequest, SetIfHashResponse,
    SetIfNotExistsRequest, SetIfNotExistsResponse, SetIfRequest, SetIfResponse, SetLengthRequest,
    SetLengthResponse, SetPopRequest, SetPopResponse, SetSampleRequest, SetSampleResponse,
    SetUnionRequest, SetUnionResponse, SortedSetFetchRequest, SortedSetFetchResponse,
    SortedSetGetRankRequest, SortedSetGetRankResponse, SortedSetGetScoreRequest,
    SortedSetGetScoreResponse, SortedSetIncrementRequest, SortedSetIncrementResponse,
    SortedSetLengthByScoreRequest, SortedSetLengthByScoreResponse, SortedSetLengthRequest,
    SortedSetLengthResponse, SortedSetPutRequest, SortedSetPutResponse, SortedSetRemoveRequest,
    SortedSetRemoveResponse, SortedSetUnionStoreRequest, SortedSetUnionStoreResponse,
};
use tonic::{Request, Response, Status, metadata::MetadataValue};

use super::{
    Shared,
    auth::{Caller, ItemAccess},
    pubsub::Topics,
};

/// Checks a cache name: non-empty, at most 255 bytes, printable.
///
/// # Errors
/// `INVALID_ARGUMENT` saying what is wrong.
pub(super) fn validate_cache_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        Err(Status::invalid_argument("cache name is empty"))
    } else if name.len() > 255 {
        Err(Status::invalid_argument(
            "cache name is longer than 255 bytes",
        ))
    } else if name.chars().any(char::is_control) {
        Err(Status::invalid_argument(
            "cache name contains control characters",
        ))
    } else {
        Ok(())
    }
}

/// `NOT_FOUND` naming the cache, as Momento answers for an unknown cache.
pub(super) fn cache_not_found(name: &str) -> Status {
    Status::not_found(format!(
        "cache {name:?} does not exist: create it first (CreateCache)"
    ))
}

/// `RESOURCE_EXHAUSTED` with the `err` code the Momento SDKs read to say
/// which limit was hit.
pub(super) fn limit_exceeded(err: &'static str, message: String) -> Status {
    let mut status = Status::resource_exhausted(message);
    status
        .metadata_mut()
        .insert("err", MetadataValue::from_static(err));
    status
}

/// Every cache, by name (in name order, as they are listed).
#[derive(Debug, Default)]
pub(super) struct Caches {
    // A std lock, not tokio's: held only for a map operation, never across
    // an `.await`.
    by_name: RwLock<BTreeMap<String, Arc<Cache>>>,
}

impl Caches {
    /// # Errors
    /// `INVALID_ARGUMENT` for a bad name, `ALREADY_EXISTS` if it exists.
    pub(super) fn create(&self, name: &str) -> Result<(), Status> {
        validate_cache_name(name)?;
        let mut caches = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        if caches.contains_key(name) {
            return Err(Status::already_exists(format!(
                "cache {name:?} already exists"
            )));
        }
        caches.insert(name.to_owned(), Arc::new(Cache::new(name)));
        Ok(())
    }

    /// Deletes a cache with its items and topics; its subscriptions end.
    ///
    /// # Errors
    /// `NOT_FOUND` naming the cache.
    pub(super) fn delete(&self, name: &str) -> Result<(), Status> {
        let removed = self
            .by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        match removed {
            Some(cache) => {
                cache.topics.close_all();
                Ok(())
            }
            None => Err(cache_not_found(name)),
        }
    }

    /// # Errors
    /// `NOT_FOUND` naming the cache.
    pub(super) fn get(&self, name: &str) -> Result<Arc<Cache>, Status> {
        self.by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| cache_not_found(name))
    }

    /// Every cache, sorted by name.
    pub(super) fn list(&self) -> Vec<Arc<Cache>> {
        let caches = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        caches.values().cloned().collect()
    }

    /// Drops expired items and topics idle for `topic_idle_timeout`.
    pub(super) fn sweep(&self, topic_idle_timeout: Duration) {
        let now = Instant::now();
        for cache in self.list() {
            cache
                .items
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, item| item.expires_at > now);
            cache.topics.sweep(topic_idle_timeout);
        }
    }
}

/// One cache.
#[derive(Debug)]
pub(super) struct Cache {
    pub(super) name: String,
    pub(super) id: String,
    items: Mutex<HashMap<Vec<u8>, Item>>,
    pub(super) topics: Topics,
}

#[derive(Debug)]
struct Item {
    value: Vec<u8>,
    expires_at: Instant,
}

impl Item {
    fn live(&self, now: Instant) -> bool {
        self.expires_at > now
    }
}

/// The expiry of an item written now with `ttl_milliseconds`.
fn expiry(ttl_milliseconds: u64) -> Result<Instant, Status> {
    if ttl_milliseconds == 0 {
        return Err(Status::invalid_argument(
            "ttl_milliseconds must be positive",
        ));
    }
    Instant::now()
        .checked_add(Duration::from_millis(ttl_milliseconds))
        .ok_or_else(|| Status::invalid_argument("ttl_milliseconds is too large"))
}

impl Cache {
    fn new(name: &str) -> Self {
        let mut id = [0u8; 8];
        rand::RngCore::fill_bytes(
            &mut <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng(),
            &mut id,
        );
        Self {
            name: name.to_owned(),
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            items: Mutex::new(HashMap::new()),
            topics: Topics::default(),
        }
    }

    fn items(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Item>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let now = Instant::now();
        let mut items = self.items();
        match items.get(key) {
            Some(item) if item.live(now) => Some(item.value.clone()),
            Some(_) => {
                items.remove(key);
                None
            }
            None => None,
        }
    }

    fn set(&self, key: Vec<u8>, value: Vec<u8>, expires_at: Instant) {
        self.items().insert(key, Item { value, expires_at });
    }

    fn delete(&self, key: &[u8]) {
        self.items().remove(key);
    }

    fn exists(&self, key: &[u8]) -> bool {
        let now = Instant::now();
        self.items().get(key).is_some_and(|item| item.live(now))
    }

    fn remaining_ttl(&self, key: &[u8]) -> Option<Duration> {
        let now = Instant::now();
        self.items()
            .get(key)
            .filter(|item| item.live(now))
            .map(|item| item.expires_at - now)
    }

    /// Adds `amount` to the base-10 integer stored at `key` (0 when absent)
    /// and stores the result with a new expiry.
    fn increment(&self, key: Vec<u8>, amount: i64, expires_at: Instant) -> Result<i64, Status> {
        let now = Instant::now();
        let mut items = self.items();
        let current = match items.get(&key) {
            Some(item) if item.live(now) => std::str::from_utf8(&item.value)
                .ok()
                .and_then(|text| text.parse::<i64>().ok())
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "the value of key {:?} is not a base-10 64-bit integer",
                        String::from_utf8_lossy(&key)
                    ))
                })?,
            _ => 0,
        };
        let value = current.checked_add(amount).ok_or_else(|| {
            Status::failed_precondition("incrementing would overflow a 64-bit integer")
        })?;
        items.insert(
            key,
            Item {
                value: value.to_string().into_bytes(),
                expires_at,
            },
        );
        Ok(value)
    }

    fn update_ttl(
        &self,
        key: &[u8],
        update: update_ttl_request::UpdateTtl,
    ) -> Result<update_ttl_response::Result, Status> {
        use update_ttl_request::UpdateTtl;
        use update_ttl_response::{Missing, NotSet, Result as Outcome, Set};
        let (ttl, applies): (u64, fn(Instant, Instant) -> bool) = match update {
            UpdateTtl::IncreaseToMilliseconds(ms) => (ms, |new, old| new > old),
            UpdateTtl::DecreaseToMilliseconds(ms) => (ms, |new, old| new < old),
            UpdateTtl::OverwriteToMilliseconds(ms) => (ms, |_, _| true),
        };
        let new_expiry = expiry(ttl)?;
        let now = Instant::now();
        let mut items = self.items();
        Ok(match items.get_mut(key) {
            Some(item) if item.live(now) => {
                if applies(new_expiry, item.expires_at) {
                    item.expires_at = new_expiry;
                    Outcome::Set(Set {})
                } else {
                    Outcome::NotSet(NotSet {})
                }
            }
            _ => Outcome::Missing(Missing {}),
        })
    }

    /// Removes every item; topics are untouched.
    pub(super) fn flush(&self) {
        self.items().clear();
    }
}

/// The cache a data call names in its `cache` header.
fn cache_header<T>(request: &Request<T>) -> Result<String, Status> {
    let value = request
        .metadata()
        .get("cache")
        .ok_or_else(|| Status::invalid_argument("missing the `cache` header naming the cache"))?;
    value
        .to_str()
        .map(str::to_owned)
        .map_err(|_| Status::invalid_argument("the `cache` header is not printable ASCII"))
}

/// `cache_client.Scs`: scalar items.
#[derive(Debug)]
pub(super) struct CacheService {
    shared: Arc<Shared>,
}

impl CacheService {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The cache a call addresses, after checking the caller may touch
    /// every key in `keys` as `access` needs.
    fn target<'k, T>(
        &self,
        request: &Request<T>,
        keys: impl IntoIterator<Item = &'k [u8]>,
        access: ItemAccess,
    ) -> Result<Arc<Cache>, Status> {
        let name = cache_header(request)?;
        let caller = Caller::of(request)?;
        for key in keys {
            caller.require_item(&name, key, access)?;
        }
        let cache = self.shared.caches.get(&name)?;
        self.shared.charge(&name)?;
        Ok(cache)
    }

    fn check_size(&self, value: &[u8]) -> Result<(), Status> {
        let limit = self.shared.limits.max_item_bytes;
        if value.len() > limit {
            return Err(limit_exceeded(
                "item_size_limit_exceeded",
                format!(
                    "item of {} bytes exceeds the {limit}-byte item limit",
                    value.len()
                ),
            ));
        }
        Ok(())
    }

    fn get_one(cache: &Cache, key: &[u8]) -> GetResponse {
        match cache.get(key) {
            Some(value) => GetResponse {
                result: ECacheResult::Hit.into(),
                cache_body: value,
                message: String::new(),
            },
            None => GetResponse {
                result: ECacheResult::Miss.into(),
                cache_body: Vec::new(),
                message: String::new(),
            },
        }
    }
}

type BatchStream<T> = tokio_stream::Iter<std::vec::IntoIter<Result<T, Status>>>;

fn batch<T>(items: Vec<T>) -> Response<BatchStream<T>> {
    let items: Vec<Result<T, Status>> = items.into_iter().map(Ok).collect();
    Response::new(tokio_stream::iter(items))
}

fn set_ok() -> SetResponse {
    SetResponse {
        result: ECacheResult::Ok.into(),
        message: String::new(),
    }
}

#[tonic::async_trait]
impl Scs for CacheService {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let key = &request.get_ref().cache_key;
        let cache = self.target(&request, [key.as_slice()], ItemAccess::Read)?;
        Ok(Response::new(Self::get_one(&cache, key)))
    }

    type GetBatchStream = BatchStream<GetResponse>;

    async fn get_batch(
        &self,
        request: Request<GetBatchRequest>,
    ) -> Result<Response<Self::GetBatchStream>, Status> {
        let items = &request.get_ref().items;
        let keys = items.iter().map(|i| i.cache_key.as_slice());
        let cache = self.target(&request, keys, ItemAccess::Read)?;
        let responses = items
            .iter()
            .map(|item| Self::get_one(&cache, &item.cache_key))
            .collect();
        Ok(batch(responses))
    }

    async fn set(&self, request: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        let cache = self.target(&request, [&*request.get_ref().cache_key], ItemAccess::Write)?;
        let set = request.into_inner();
        self.check_size(&set.cache_body)?;
        cache.set(set.cache_key, set.cache_body, expiry(set.ttl_milliseconds)?);
        Ok(Response::new(set_ok()))
    }

    type SetBatchStream = BatchStream<SetResponse>;

    async fn set_batch(
        &self,
        request: Request<SetBatchRequest>,
    ) -> Result<Response<Self::SetBatchStream>, Status> {
        let keys = request
            .get_ref()
            .items
            .iter()
            .map(|i| i.cache_key.as_slice());
        let cache = self.target(&request, keys, ItemAccess::Write)?;
        let items = request.into_inner().items;
        // Check everything first, so a bad item leaves the cache unchanged.
        let mut writes = Vec::with_capacity(items.len());
        for item in items {
            self.check_size(&item.cache_body)?;
            let expires_at = expiry(item.ttl_milliseconds)?;
            writes.push((item.cache_key, item.cache_body, expires_at));
        }
        let responses = writes
            .into_iter()
            .map(|(key, value, expires_at)| {
                cache.set(key, value, expires_at);
                set_ok()
            })
            .collect();
        Ok(batch(responses))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let key = &request.get_ref().cache_key;
        let cache = self.target(&request, [key.as_slice()], ItemAccess::Write)?;
        cache.delete(key);
        Ok(Response::new(DeleteResponse {}))
    }

    async fn keys_exist(
        &self,
        request: Request<KeysExistRequest>,
    ) -> Result<Response<KeysExistResponse>, Status> {
        let keys = request.get_ref().cache_keys.iter().map(Vec::as_slice);
        let cache = self.target(&request, keys, ItemAccess::Read)?;
        let exists = request
            .get_ref()
            .cache_keys
            .iter()
            .map(|key| cache.exists(key))
            .collect();
        Ok(Response::new(KeysExistResponse { exists }))
    }

    async fn increment(
        &self,
        request: Request<IncrementRequest>,
    ) -> Result<Response<IncrementResponse>, Status> {
        let key = &*request.get_ref().cache_key;
        let cache = self.target(&request, [key], ItemAccess::ReadWrite)?;
        let add = request.into_inner();
        let value = cache.increment(add.cache_key, add.amount, expiry(add.ttl_milliseconds)?)?;
        Ok(Response::new(IncrementResponse { value }))
    }

    async fn update_ttl(
        &self,
        request: Request<UpdateTtlRequest>,
    ) -> Result<Response<UpdateTtlResponse>, Status> {
        let key = &request.get_ref().cache_key;
        let cache = self.target(&request, [key.as_slice()], ItemAccess::Write)?;
        let update = request
            .get_ref()
            .update_ttl
            .ok_or_else(|| Status::invalid_argument("update_ttl is required"))?;
        let result = cache.update_ttl(key, update)?;
        Ok(Response::new(UpdateTtlResponse {
            result: Some(result),
        }))
    }

    async fn item_get_ttl(
        &self,
        request: Request<ItemGetTtlRequest>,
    ) -> Result<Response<ItemGetTtlResponse>, Status> {
        let key = &request.get_ref().cache_key;
        let cache = self.target(&request, [key.as_slice()], ItemAccess::Read)?;
        let result = match cache.remaining_ttl(key) {
            Some(remaining) => item_get_ttl_response::Result::Found(item_get_ttl_response::Found {
                remaining_ttl_millis: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
            }),
            None => item_get_ttl_response::Result::Missing(item_get_ttl_response::Missing {}),
        };
        Ok(Response::new(ItemGetTtlResponse {
            result: Some(result),
        }))
    }

    unimplemented_rpcs! { "cache_client.Scs":
        get_with_hash(GetWithHashRequest) -> GetWithHashResponse;
        set_if(SetIfRequest) -> SetIfResponse;
        set_if_hash(SetIfHashRequest) -> SetIfHashResponse;
        set_if_not_exists(SetIfNotExistsRequest) -> SetIfNotExistsResponse;
        item_get_type(ItemGetTypeRequest) -> ItemGetTypeResponse;
        dictionary_get(DictionaryGetRequest) -> DictionaryGetResponse;
        dictionary_fetch(DictionaryFetchRequest) -> DictionaryFetchResponse;
        dictionary_set(DictionarySetRequest) -> DictionarySetResponse;
        dictionary_increment(DictionaryIncrementRequest) -> DictionaryIncrementResponse;
        dictionary_delete(DictionaryDeleteRequest) -> DictionaryDeleteResponse;
        dictionary_length(DictionaryLengthRequest) -> DictionaryLengthResponse;
        set_fetch(SetFetchRequest) -> SetFetchResponse;
        set_sample(SetSampleRequest) -> SetSampleResponse;
        set_union(SetUnionRequest) -> SetUnionResponse;
        set_difference(SetDifferenceRequest) -> SetDifferenceResponse;
        set_contains(SetContainsRequest) -> SetContainsResponse;
        set_length(SetLengthRequest) -> SetLengthResponse;
        set_pop(SetPopRequest) -> SetPopResponse;
        list_push_front(ListPushFrontRequest) -> ListPushFrontResponse;
        list_push_back(ListPushBackRequest) -> ListPushBackResponse;
        list_pop_front(ListPopFrontRequest) -> ListPopFrontResponse;
        list_pop_back(ListPopBackRequest) -> ListPopBackResponse;
        list_erase(ListEraseRequest) -> ListEraseResponse;
        list_remove(ListRemoveRequest) -> ListRemoveResponse;
        list_fetch(ListFetchRequest) -> ListFetchResponse;
        list_length(ListLengthRequest) -> ListLengthResponse;
        list_concatenate_front(ListConcatenateFrontRequest) -> ListConcatenateFrontResponse;
        list_concatenate_back(ListConcatenateBackRequest) -> ListConcatenateBackResponse;
        list_retain(ListRetainRequest) -> ListRetainResponse;
        sorted_set_put(SortedSetPutRequest) -> SortedSetPutResponse;
        sorted_set_fetch(SortedSetFetchRequest) -> SortedSetFetchResponse;
        sorted_set_get_score(SortedSetGetScoreRequest) -> SortedSetGetScoreResponse;
        sorted_set_remove(SortedSetRemoveRequest) -> SortedSetRemoveResponse;
        sorted_set_increment(SortedSetIncrementRequest) -> SortedSetIncrementResponse;
        sorted_set_get_rank(SortedSetGetRankRequest) -> SortedSetGetRankResponse;
        sorted_set_length(SortedSetLengthRequest) -> SortedSetLengthResponse;
        sorted_set_length_by_score(SortedSetLengthByScoreRequest) -> SortedSetLengthByScoreResponse;
        sorted_set_union_store(SortedSetUnionStoreRequest) -> SortedSetUnionStoreResponse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeping_drops_expired_items_only() {
        let caches = Caches::default();
        caches.create("c").unwrap();
        let cache = caches.get("c").unwrap();
        cache.set(b"old".to_vec(), b"x".to_vec(), Instant::now());
        cache.set(
            b"new".to_vec(),
            b"y".to_vec(),
            Instant::now() + Duration::from_secs(60),
        );
        caches.sweep(Duration::from_secs(600));
        assert_eq!(cache.items().len(), 1);
        assert_eq!(cache.get(b"new"), Some(b"y".to_vec()));
    }
}
