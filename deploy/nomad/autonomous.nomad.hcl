# Autonomous app on Nomad: ingress, worker and coordinator groups from one app image.
#   nomad job run -var image=registry.example.com/autonomous/orderflow:0.1.0 deploy/nomad/autonomous.nomad.hcl
# Secrets (API keys, signing secrets, the Postgres URL) come from Nomad Variables at
# nomad/jobs/autonomous; nothing secret is written in this file. NATS users: each group
# connects as its own user (coordinator, ingress, worker) when the variable holds
# nats_password_<role>; configure the NATS servers with `autonomous nats-auth` (docs/deploy.md).

variable "coordinator_count" {
  type        = number
  default     = 1
  description = "Coordinators (one leads; the others stand by). More than 1 needs Postgres."
}

variable "image" {
  type        = string
  description = "The app image (built with the project's Dockerfile)."
  default     = "registry.example.com/autonomous/app:0.1.0"
}

variable "nats_url" {
  type    = string
  default = "nats://nats.service.consul:4222"
}

variable "tenant" {
  type    = string
  default = "default"
}

variable "ingress_count" {
  type    = number
  default = 2
}

variable "worker_count" {
  type    = number
  default = 2
}

variable "python_worker_count" {
  type        = number
  default     = 0
  description = "Python workers (docs/python.md): the app's Python handlers and routes."
}

variable "python_image" {
  type        = string
  default     = "registry.example.com/autonomous/app-python:0.1.0"
  description = "The Python workers' image: Python, the autonomous package and the app's module (Dockerfile.python)."
}

variable "python_module" {
  type    = string
  default = "/app/main.py"
}

variable "graph" {
  type        = string
  default     = ""
  description = "The app graph (describe's JSON): for an app written in Python, which image (the autonomous runtime) serves; for a Swift app, what its Python workers read."
}

variable "serves_graph" {
  type        = bool
  default     = false
  description = "An app written in Python: the ingress, worker and coordinator tasks serve var.graph."
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

job "autonomous" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel      = 1
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    auto_revert       = true
    canary            = 0
  }

  migrate {
    max_parallel     = 1
    health_check     = "checks"
    min_healthy_time = "10s"
    healthy_deadline = "5m"
  }

  group "ingress" {
    count = var.ingress_count

    network {
      port "http" {
        to = 3000
      }
    }

    scaling {
      enabled = true
      min     = 2
      max     = 20

      policy {
        cooldown            = "1m"
        evaluation_interval = "30s"

        check "cpu" {
          source = "nomad-apm"
          query  = "avg_cpu"

          strategy "target-value" {
            target = 70
          }
        }
      }
    }

    service {
      name     = "autonomous-ingress"
      port     = "http"
      provider = "nomad"
      # Clients reach the ingress over HTTPS through the load balancer (these tags are
      # Traefik's); keep port 3000 itself off public networks.
      tags = [
        "traefik.enable=true",
        "traefik.http.routers.autonomous.entrypoints=websecure",
        "traefik.http.routers.autonomous.tls=true",
      ]

      check {
        name     = "ready"
        type     = "http"
        path     = "/readyz"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "ingress" {
      driver       = "docker"
      kill_timeout = "45s"
      kill_signal  = "SIGTERM"

      config {
        image    = var.image
        args     = ["ingress"]
        ports    = ["http"]
        readonly_rootfs = true
      }

      env {
        AUTONOMOUS_NATS_URL    = var.nats_url
        AUTONOMOUS_TENANT      = var.tenant
        AUTONOMOUS_HTTP_HOST   = "0.0.0.0"
        AUTONOMOUS_HTTP_PORT   = "3000"
        AUTONOMOUS_ACCESS_LOG  = "true"
        # Every request needs a tenant's API key (or a provider's signature for webhooks).
        AUTONOMOUS_REQUIRE_API_KEY = "true"
        AUTONOMOUS_LOG_LEVEL   = "info"
        # An app written in Python: the autonomous runtime image serves its graph.
        AUTONOMOUS_GRAPH       = var.serves_graph ? "/local/graph.json" : ""
      }

      template {
        destination = "local/graph.json"
        data        = var.graph
        change_mode = "restart"
      }

      template {
        destination = "secrets/app.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        {{- with nomadVar "nomad/jobs/autonomous" }}{{ range .Tuples }}{{ if not (.K | regexMatch "^nats_password_") }}
        {{ .K }}={{ .V | toJSON }}
        {{- end }}{{ end }}{{ range .Tuples }}{{ if eq .K "nats_password_ingress" }}
        AUTONOMOUS_NATS_USER=ingress
        AUTONOMOUS_NATS_PASSWORD={{ .V | toJSON }}
        {{- end }}{{ end }}{{ end }}
        EOT
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }

  group "worker" {
    count = var.worker_count

    network {
      port "health" {
        to = 8081
      }
    }

    scaling {
      enabled = true
      min     = 1
      max     = 50

      policy {
        cooldown            = "1m"
        evaluation_interval = "30s"

        check "cpu" {
          source = "nomad-apm"
          query  = "avg_cpu"

          strategy "target-value" {
            target = 70
          }
        }
      }
    }

    service {
      name     = "autonomous-worker"
      port     = "health"
      provider = "nomad"

      check {
        name     = "ready"
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "worker" {
      driver       = "docker"
      kill_timeout = "45s"
      kill_signal  = "SIGTERM"

      config {
        image    = var.image
        args     = ["worker"]
        ports    = ["health"]
        readonly_rootfs = true
      }

      env {
        AUTONOMOUS_NATS_URL    = var.nats_url
        AUTONOMOUS_TENANT      = var.tenant
        # /healthz, /readyz and /metrics on the allocation's address, for Nomad's checks.
        AUTONOMOUS_HEALTH_HOST = "0.0.0.0"
        AUTONOMOUS_HEALTH_PORT = "8081"
        AUTONOMOUS_LOG_LEVEL   = "info"
        # An app written in Python: the autonomous runtime image serves its graph.
        AUTONOMOUS_GRAPH       = var.serves_graph ? "/local/graph.json" : ""
      }

      template {
        destination = "local/graph.json"
        data        = var.graph
        change_mode = "restart"
      }

      template {
        destination = "secrets/app.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        {{- with nomadVar "nomad/jobs/autonomous" }}{{ range .Tuples }}{{ if not (.K | regexMatch "^nats_password_") }}
        {{ .K }}={{ .V | toJSON }}
        {{- end }}{{ end }}{{ range .Tuples }}{{ if eq .K "nats_password_worker" }}
        AUTONOMOUS_NATS_USER=worker
        AUTONOMOUS_NATS_PASSWORD={{ .V | toJSON }}
        {{- end }}{{ end }}{{ end }}
        EOT
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }

  group "coordinator" {
    # Coordinators elect a leader through a lease in Postgres; more than one (standbys for
    # failover) needs AUTONOMOUS_POSTGRES_URL, since each one's SQLite would be its own.
    count = var.coordinator_count

    network {
      port "health" {
        to = 8081
      }
    }

    scaling {
      enabled = false
      min     = 1
      max     = 5
    }

    service {
      name     = "autonomous-coordinator"
      port     = "health"
      provider = "nomad"

      check {
        name     = "ready"
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "coordinator" {
      driver       = "docker"
      kill_timeout = "30s"
      kill_signal  = "SIGTERM"

      config {
        image    = var.image
        args     = ["coordinator", "--data-dir", "/alloc/data"]
        ports    = ["health"]
        readonly_rootfs = true
      }

      env {
        AUTONOMOUS_NATS_URL    = var.nats_url
        AUTONOMOUS_TENANT      = var.tenant
        AUTONOMOUS_HEALTH_HOST = "0.0.0.0"
        AUTONOMOUS_HEALTH_PORT = "8081"
        # The admin API stays on the task's loopback (nomad alloc exec, or a sidecar tunnel).
        AUTONOMOUS_ADMIN_HOST  = "127.0.0.1"
        AUTONOMOUS_ADMIN_PORT  = "8082"
        AUTONOMOUS_LOG_LEVEL   = "info"
        # An app written in Python: the autonomous runtime image serves its graph.
        AUTONOMOUS_GRAPH       = var.serves_graph ? "/local/graph.json" : ""
      }

      template {
        destination = "local/graph.json"
        data        = var.graph
        change_mode = "restart"
      }

      template {
        destination = "secrets/app.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        {{- with nomadVar "nomad/jobs/autonomous" }}{{ range .Tuples }}{{ if not (.K | regexMatch "^nats_password_") }}
        {{ .K }}={{ .V | toJSON }}
        {{- end }}{{ end }}{{ range .Tuples }}{{ if eq .K "nats_password_coordinator" }}
        AUTONOMOUS_NATS_USER=coordinator
        AUTONOMOUS_NATS_PASSWORD={{ .V | toJSON }}
        {{- end }}{{ end }}{{ end }}
        EOT
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }

  # The app's Python handlers and routes (docs/python.md), with the worker role's NATS user.
  group "python-worker" {
    count = var.python_worker_count

    network {
      port "health" {
        to = 8081
      }
    }

    scaling {
      enabled = true
      min     = 0
      max     = 50

      policy {
        cooldown            = "1m"
        evaluation_interval = "30s"

        check "cpu" {
          source = "nomad-apm"
          query  = "avg_cpu"

          strategy "target-value" {
            target = 70
          }
        }
      }
    }

    service {
      name     = "autonomous-python-worker"
      port     = "health"
      provider = "nomad"

      check {
        name     = "ready"
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "python-worker" {
      driver       = "docker"
      kill_timeout = "45s"
      kill_signal  = "SIGTERM"

      config {
        image           = var.python_image
        command         = "python"
        args            = concat(["-m", "autonomous", "worker", var.python_module], var.serves_graph ? [] : ["--graph", "/local/graph.json"])
        ports           = ["health"]
        readonly_rootfs = true
      }

      env {
        AUTONOMOUS_NATS_URL     = var.nats_url
        AUTONOMOUS_TENANT       = var.tenant
        AUTONOMOUS_HEALTH_HOST  = "0.0.0.0"
        AUTONOMOUS_HEALTH_PORT  = "8081"
        AUTONOMOUS_LOG_LEVEL    = "info"
        PYTHONDONTWRITEBYTECODE = "1"
      }

      template {
        destination = "local/graph.json"
        data        = var.graph
        change_mode = "restart"
      }

      template {
        destination = "secrets/app.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        {{- with nomadVar "nomad/jobs/autonomous" }}{{ range .Tuples }}{{ if not (.K | regexMatch "^nats_password_") }}
        {{ .K }}={{ .V | toJSON }}
        {{- end }}{{ end }}{{ range .Tuples }}{{ if eq .K "nats_password_worker" }}
        AUTONOMOUS_NATS_USER=worker
        AUTONOMOUS_NATS_PASSWORD={{ .V | toJSON }}
        {{- end }}{{ end }}{{ end }}
        EOT
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
