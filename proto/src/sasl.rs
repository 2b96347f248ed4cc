//! SASL (owned by the lead; stub).
