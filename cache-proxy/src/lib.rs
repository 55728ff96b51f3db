//! The caching gateway in front of the services (see DESIGN.md section 7).
