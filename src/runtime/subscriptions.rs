//! What a gateway holds for notifications: the published topics, this gateway's name in
//! delivery leases, the websocket clients bound here, the wake-up its own writes ring, and the
//! HTTP client rest-hook deliveries use — one that refuses non-public addresses unless the
//! host is allowed (`[subscriptions] private_hosts`), and follows no redirects.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use crate::config::SubscriptionSettings;
use crate::fhir::subscription::Topics;

/// Subscriptions one gateway delivers at the same time (each holds at most one database
/// session at a time, so requests keep the rest of the pool).
const CONCURRENT_DELIVERIES: usize = 4;

/// A websocket client bound to a subscription on this gateway: where its messages go, and
/// until when (unix ms) the binding lives.
#[derive(Debug, Clone)]
pub struct Binding {
    pub id: u64,
    pub sender: tokio::sync::mpsc::UnboundedSender<String>,
    /// The digest of the access token the binding token was issued to.
    pub token_digest: String,
    pub expires_at: i64,
}

pub struct Hub {
    pub topics: Topics,
    /// This gateway's name in `subscription_state.lease_owner`.
    pub node: String,
    pub wake: tokio::sync::Notify,
    pub http: reqwest::Client,
    /// How many subscriptions this gateway delivers at once.
    pub deliveries: tokio::sync::Semaphore,
    bindings: Mutex<BTreeMap<String, Vec<Binding>>>,
    next_binding: std::sync::atomic::AtomicU64,
}

impl Hub {
    pub fn new(settings: &SubscriptionSettings) -> Result<Hub, String> {
        let topics = Topics::load()?;
        let resolver = Arc::new(PublicOnly { allowed: settings.private_hosts.clone() });
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // Through a proxy the proxy would resolve the target, past the resolver below.
            .no_proxy()
            .dns_resolver(resolver)
            .user_agent("Renraku notifications")
            .build()
            .map_err(|e| format!("notification HTTP client: {e}"))?;
        Ok(Hub {
            topics,
            node: uuid::Uuid::new_v4().to_string(),
            wake: tokio::sync::Notify::new(),
            http,
            deliveries: tokio::sync::Semaphore::new(CONCURRENT_DELIVERIES),
            bindings: Mutex::new(BTreeMap::new()),
            next_binding: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// Binds a websocket client to `subscription` until `expires_at`; returns the binding's id.
    pub fn bind(&self, subscription: &str, sender: tokio::sync::mpsc::UnboundedSender<String>, token_digest: String, expires_at: i64) -> u64 {
        let id = self.next_binding.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut bindings = self.bindings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        bindings.entry(subscription.to_owned()).or_default().push(Binding { id, sender, token_digest, expires_at });
        drop(bindings);
        self.wake.notify_one();
        id
    }

    pub fn unbind(&self, subscription: &str, id: u64) {
        let mut bindings = self.bindings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(list) = bindings.get_mut(subscription) {
            list.retain(|b| b.id != id);
            if list.is_empty() {
                bindings.remove(subscription);
            }
        }
    }

    /// The live bindings of `subscription` at `now` (expired and closed ones are dropped).
    pub fn bound(&self, subscription: &str, now: i64) -> Vec<Binding> {
        let mut bindings = self.bindings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(list) = bindings.get_mut(subscription) else { return Vec::new() };
        list.retain(|b| b.expires_at > now && !b.sender.is_closed());
        let live = list.clone();
        if list.is_empty() {
            bindings.remove(subscription);
        }
        live
    }

    /// The subscriptions with a live binding here.
    pub fn bound_subscriptions(&self, now: i64) -> Vec<String> {
        let ids: Vec<String> = self.bindings.lock().unwrap_or_else(std::sync::PoisonError::into_inner).keys().cloned().collect();
        ids.into_iter().filter(|id| !self.bound(id, now).is_empty()).collect()
    }
}

/// Whether `address` is one a notification may not reach without an allowance: loopback,
/// private, link-local, shared, unspecified, multicast, documentation or broadcast.
pub fn is_private(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                || (a == 192 && b == 0 && v4.octets().get(2) == Some(&0))
                || a == 0
                || a >= 240
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let [first, second, ..] = segments;
            // IPv4 carried inside IPv6: mapped (::ffff:a.b.c.d) and compatible (::a.b.c.d)
            // are judged as the IPv4 address; NAT64 (64:ff9b::/96, 64:ff9b:1::/48) and 6to4
            // (2002::/16) are refused, as they reach IPv4 hosts through translators.
            let embedded = |high: u16, low: u16| std::net::Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let [.., g, h] = segments;
            if segments.iter().take(6).all(|s| *s == 0) && !v6.is_loopback() && !v6.is_unspecified() {
                return is_private(IpAddr::V4(embedded(g, h)));
            }
            if (first == 0x64 && second == 0xff9b) || first == 0x2002 {
                // Translated to IPv4 by a gateway the server cannot see: never a receiver.
                return true;
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                || first == 0x2001 && second == 0x0db8
        }
    }
}

/// Resolves names, keeping only public addresses unless the name is allowed.
struct PublicOnly {
    allowed: Vec<String>,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let allowed = self.allowed.iter().any(|a| a.eq_ignore_ascii_case(&host));
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let usable: Vec<SocketAddr> = found.into_iter().filter(|a| allowed || !is_private(a.ip())).collect();
            if usable.is_empty() {
                let refused: Box<dyn std::error::Error + Send + Sync> = format!("{host} resolves to no public address").into();
                return Err(refused);
            }
            let addresses: reqwest::dns::Addrs = Box::new(usable.into_iter());
            Ok(addresses)
        })
    }
}
