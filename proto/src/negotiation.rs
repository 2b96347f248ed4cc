//! c2s stream negotiation (owned by the lead; stub).
