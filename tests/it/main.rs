//! Herald's integration tests: one binary, each test starting what it needs on loopback (a
//! real `redis-server` on a free port, Herald in-process or as a child, HTTP sinks).

mod auth;
mod conformance;
mod e2e;
mod footprint;
mod harness;
mod platform_apns;
mod platform_email;
mod platform_fcm;
mod platform_messenger;
mod platform_sms;
mod platform_webpush;
mod platform_whatsapp;
mod platforms;
mod policy;
mod process;
mod support;
