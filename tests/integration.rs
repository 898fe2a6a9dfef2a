//! One integration test binary (as in ripgrep and rustic): every module below is a topic.

mod integration {
    pub mod cli;
    pub mod cluster;
    pub mod concurrent;
    pub mod copy;
    pub mod crash;
    pub mod data;
    pub mod dedup;
    pub mod delta;
    pub mod diskfull;
    pub mod engines;
    pub mod faults;
    pub mod golden;
    pub mod hardening;
    pub mod lifecycle;
    pub mod net;
    pub mod outage;
    pub mod properties;
    pub mod push_pull;
    pub mod remote_rebuild;
    pub mod remote_shared;
    pub mod remote_store;
    pub mod roundtrip;
    pub mod seams;
    pub mod server;
    pub mod store_contract;
    pub mod support;
    pub mod tenants;
    pub mod tus;
}
