//! Express session cookies (express-session + connect-pg-simple), accepted as the Express app
//! issues them.
