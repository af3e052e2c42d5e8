// `import Autonomous` is all an app needs. The app model (tables, records, handlers, routes,
// schedules, secrets and their errors) lives in ClusterCore, below the roles that run it, and
// its public declarations are exactly that model: wire format, stores, RPC, dead letters and
// the roles are `package`, so they are visible inside this package only. `Logging` comes with
// it because every context hands handlers a `Logger` (`ctx.logger`).
@_exported public import ClusterCore
@_exported public import Logging
