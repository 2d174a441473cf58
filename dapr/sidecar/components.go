package main

// The components this slim daprd knows about. Anything not registered here is
// rejected by the sidecar at load time ("couldn't find ... component"), so a new
// component type in components/ must be added here too and the binary rebuilt
// (scripts/build-daprd.sh notices the change through the source hash).

import (
	"github.com/dapr/components-contrib/bindings/cron"
	nrkubernetes "github.com/dapr/components-contrib/nameresolution/kubernetes"
	"github.com/dapr/components-contrib/nameresolution/mdns"
	nrsqlite "github.com/dapr/components-contrib/nameresolution/sqlite"
	pubsubinmemory "github.com/dapr/components-contrib/pubsub/in-memory"
	"github.com/dapr/components-contrib/pubsub/rabbitmq"
	pubsubredis "github.com/dapr/components-contrib/pubsub/redis"
	sskubernetes "github.com/dapr/components-contrib/secretstores/kubernetes"
	"github.com/dapr/components-contrib/secretstores/local/env"
	"github.com/dapr/components-contrib/secretstores/local/file"
	stateinmemory "github.com/dapr/components-contrib/state/in-memory"
	pgv1 "github.com/dapr/components-contrib/state/postgresql/v1"
	pgv2 "github.com/dapr/components-contrib/state/postgresql/v2"
	stateredis "github.com/dapr/components-contrib/state/redis"
	statesqlite "github.com/dapr/components-contrib/state/sqlite"

	"github.com/dapr/dapr/pkg/components"
	bindingsLoader "github.com/dapr/dapr/pkg/components/bindings"
	nrLoader "github.com/dapr/dapr/pkg/components/nameresolution"
	pubsubLoader "github.com/dapr/dapr/pkg/components/pubsub"
	secretstoresLoader "github.com/dapr/dapr/pkg/components/secretstores"
	stateLoader "github.com/dapr/dapr/pkg/components/state"
)

// registerComponents fills the default registries. It runs once, before the
// registries are handed to the runtime.
func registerComponents() {
	// Pub/sub: RabbitMQ or Redis Streams in the Dapr deployment, in-memory for
	// a single sidecar (smoke tests, local experiments).
	pubsubLoader.DefaultRegistry.RegisterComponent(rabbitmq.NewRabbitMQ, "rabbitmq")
	pubsubLoader.DefaultRegistry.RegisterComponent(pubsubredis.NewRedisStreams, "redis")
	pubsubLoader.DefaultRegistry.RegisterComponent(pubsubinmemory.New, "in-memory")

	// State stores. PostgreSQL keeps both implementations under the same
	// names and the same defaults as upstream daprd: metadata version "v1"
	// (or none) selects v1, "v2" selects v2.
	postgres := components.Versioning{
		Preferred: components.VersionConstructor{Version: "v2", Constructor: pgv2.NewPostgreSQLStateStore},
		Others:    []components.VersionConstructor{{Version: "v1", Constructor: pgv1.NewPostgreSQLStateStore}},
		Default:   "v1",
	}
	stateLoader.DefaultRegistry.RegisterComponentWithVersions("postgresql", postgres)
	stateLoader.DefaultRegistry.RegisterComponentWithVersions("postgres", postgres)
	stateLoader.DefaultRegistry.RegisterComponent(stateredis.NewRedisStateStore, "redis")
	stateLoader.DefaultRegistry.RegisterComponent(statesqlite.NewSQLiteStateStore, "sqlite", "sqlite3")
	stateLoader.DefaultRegistry.RegisterComponent(stateinmemory.NewInMemoryStateStore, "in-memory")

	// Secret stores. "kubernetes" is also what daprd loads on its own as the
	// built-in store in Kubernetes mode.
	secretstoresLoader.DefaultRegistry.RegisterComponent(file.NewLocalSecretStore, "local.file")
	secretstoresLoader.DefaultRegistry.RegisterComponent(env.NewEnvSecretStore, "local.env")
	secretstoresLoader.DefaultRegistry.RegisterComponent(sskubernetes.NewKubernetesSecretStore, "kubernetes")

	// Bindings: the cron input binding that ticks the scheduler service.
	bindingsLoader.DefaultRegistry.RegisterInputBinding(cron.NewCron, "cron")

	// Name resolution: mdns is daprd's self-hosted default, kubernetes its
	// Kubernetes default, sqlite the multi-host self-hosted option.
	nrLoader.DefaultRegistry.RegisterComponent(mdns.NewResolver, "mdns")
	nrLoader.DefaultRegistry.RegisterComponent(nrsqlite.NewResolver, "sqlite")
	nrLoader.DefaultRegistry.RegisterComponent(nrkubernetes.NewResolver, "kubernetes")
}
