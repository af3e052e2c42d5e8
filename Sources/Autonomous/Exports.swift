// `import Autonomous` is all an app needs: the app model (tables, records, handlers, routes,
// schedules) lives in ClusterCore and is re-exported here as one unit, because apps use
// nearly all of it.
@_exported import ClusterCore
