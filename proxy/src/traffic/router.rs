//! The pure routing decision for one HTTP request.
