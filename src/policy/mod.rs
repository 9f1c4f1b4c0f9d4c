//! `policy`: the versioned policy document (parse, validate, diff) and the pure decision
//! `route(notification, context, policy, now) -> Decision`. Nothing here does I/O: the caller
//! loads contact state, budgets spent and frequency counts in one batch and passes them in, so
//! every rule can be property-tested.

mod decide;
mod diff;
mod document;

pub use decide::{
    combine_contact_states, next_utc_midnight, quiet_hours_end, route, BudgetKey, Decision,
    RouteContext, Skip, SkipReason, SuppressReason, WaitReason,
};
pub use diff::diff;
pub use document::{
    Budget, BudgetScope, ChannelPolicy, ClockTime, FrequencyCap, Micros, Policy, PolicyError,
    Price, PriceTable, QuietHours, Rate, RateScope, RetryPolicy, RetrySettings, Routing, Strategy,
    Window,
};

#[cfg(test)]
mod proptests;
