// Command daprd is the Dapr sidecar built for OpsConductor: the runtime of the
// pinned github.com/dapr/dapr release, started the same way as upstream's
// cmd/daprd, but with only the components listed in components.go compiled in.
//
// Upstream's cmd/daprd/app package cannot be reused for this, because it
// imports cmd/daprd/components, which is either every component (build tags
// stablecomponents/allcomponents) or a package that panics at start-up.
package main

import (
	"context"
	"fmt"
	"os"

	"go.uber.org/automaxprocs/maxprocs"

	"github.com/dapr/dapr/cmd/daprd/options"
	"github.com/dapr/dapr/pkg/buildinfo"
	bindingsLoader "github.com/dapr/dapr/pkg/components/bindings"
	configurationLoader "github.com/dapr/dapr/pkg/components/configuration"
	conversationLoader "github.com/dapr/dapr/pkg/components/conversation"
	cryptoLoader "github.com/dapr/dapr/pkg/components/crypto"
	lockLoader "github.com/dapr/dapr/pkg/components/lock"
	httpMiddlewareLoader "github.com/dapr/dapr/pkg/components/middleware/http"
	nrLoader "github.com/dapr/dapr/pkg/components/nameresolution"
	pubsubLoader "github.com/dapr/dapr/pkg/components/pubsub"
	secretstoresLoader "github.com/dapr/dapr/pkg/components/secretstores"
	stateLoader "github.com/dapr/dapr/pkg/components/state"
	"github.com/dapr/dapr/pkg/healthz"
	"github.com/dapr/dapr/pkg/metrics"
	"github.com/dapr/dapr/pkg/modes"
	"github.com/dapr/dapr/pkg/runtime"
	"github.com/dapr/dapr/pkg/runtime/registry"
	"github.com/dapr/dapr/pkg/security"
	"github.com/dapr/kit/concurrency"
	"github.com/dapr/kit/logger"
	"github.com/dapr/kit/signals"
)

var (
	log        = logger.NewLogger("dapr.runtime")
	logContrib = logger.NewLogger("dapr.contrib")
)

func main() {
	_, _ = maxprocs.Set() // honour container CPU quotas, as upstream does

	opts, err := options.New(os.Args[1:])
	if err != nil {
		log.Fatalf("Failed to parse flags: %v", err)
	}

	// Informational flags exit before anything starts.
	switch {
	case opts.RuntimeVersion:
		fmt.Println(buildinfo.Version()) //nolint:forbidigo
		return
	case opts.BuildInfo:
		fmt.Printf("Version: %s\nGit Commit: %s\nGit Version: %s\n", //nolint:forbidigo
			buildinfo.Version(), buildinfo.Commit(), buildinfo.GitVersion())
		return
	case opts.WaitCommand:
		runtime.WaitUntilDaprOutboundReady(opts.DaprHTTPPort)
		return
	}

	opts.Logger.SetAppID(opts.AppID)
	if err = logger.ApplyOptionsToLoggers(&opts.Logger); err != nil {
		log.Fatal(err)
	}
	log.Infof("Starting Dapr Runtime -- version %s -- commit %s (OpsConductor slim build)", buildinfo.Version(), buildinfo.Commit())
	log.Infof("Log level set to: %s", opts.Logger.OutputLevel)

	registerComponents()
	reg := newRegistry()

	if err = run(opts, reg); err != nil {
		log.Fatalf("Fatal error from runtime: %s", err)
	}
	log.Info("Daprd shutdown gracefully")
}

// newRegistry hands every component registry to the runtime, including the
// kinds this build registers nothing for (they stay empty, which daprd
// accepts), and points their loggers where upstream daprd points them.
func newRegistry() *registry.Options {
	secretstoresLoader.DefaultRegistry.Logger = logContrib
	stateLoader.DefaultRegistry.Logger = logContrib
	cryptoLoader.DefaultRegistry.Logger = logContrib
	configurationLoader.DefaultRegistry.Logger = logContrib
	lockLoader.DefaultRegistry.Logger = logContrib
	pubsubLoader.DefaultRegistry.Logger = logContrib
	nrLoader.DefaultRegistry.Logger = logContrib
	bindingsLoader.DefaultRegistry.Logger = logContrib
	conversationLoader.DefaultRegistry.Logger = logContrib
	httpMiddlewareLoader.DefaultRegistry.Logger = log // upstream logs middleware on the runtime logger

	return registry.NewOptions().
		WithSecretStores(secretstoresLoader.DefaultRegistry).
		WithStateStores(stateLoader.DefaultRegistry).
		WithConfigurations(configurationLoader.DefaultRegistry).
		WithLocks(lockLoader.DefaultRegistry).
		WithPubSubs(pubsubLoader.DefaultRegistry).
		WithNameResolutions(nrLoader.DefaultRegistry).
		WithBindings(bindingsLoader.DefaultRegistry).
		WithCryptoProviders(cryptoLoader.DefaultRegistry).
		WithHTTPMiddlewares(httpMiddlewareLoader.DefaultRegistry).
		WithConversations(conversationLoader.DefaultRegistry)
}

// run starts the security provider (mTLS identity, possibly from Sentry) and
// the runtime side by side until a signal or a fatal error stops them.
func run(opts *options.Options, reg *registry.Options) error {
	ctx := signals.Context()
	hz := healthz.New()

	secProvider, err := security.New(ctx, security.Options{
		SentryAddress:           opts.SentryAddress,
		ControlPlaneTrustDomain: opts.ControlPlaneTrustDomain,
		ControlPlaneNamespace:   opts.ControlPlaneNamespace,
		TrustAnchors:            opts.TrustAnchors,
		AppID:                   opts.AppID,
		MTLSEnabled:             opts.EnableMTLS,
		Mode:                    modes.DaprMode(opts.Mode),
		Healthz:                 hz,
		JwtAudiences:            opts.SentryRequestJwtAudiences,
	})
	if err != nil {
		return err
	}

	startRuntime := func(ctx context.Context) error {
		sec, err := secProvider.Handler(ctx)
		if err != nil {
			return err
		}
		rt, err := runtime.FromConfig(ctx, runtimeConfig(opts, reg, sec, hz))
		if err != nil {
			return err
		}
		return rt.Run(ctx)
	}

	return concurrency.NewRunnerManager(secProvider.Run, startRuntime).Run(ctx)
}

// runtimeConfig maps the parsed command line onto the runtime's configuration.
func runtimeConfig(opts *options.Options, reg *registry.Options, sec security.Handler, hz healthz.Healthz) *runtime.Config {
	return &runtime.Config{
		AppID:            opts.AppID,
		Mode:             opts.Mode,
		Config:           opts.Config,
		ResourcesPath:    opts.ResourcesPath,
		ComponentsPath:   opts.ComponentsPath,
		Registry:         reg,
		Security:         sec,
		Healthz:          hz,
		EnableMTLS:       opts.EnableMTLS,
		SentryAddress:    opts.SentryAddress,
		EnableAPILogging: opts.EnableAPILogging,

		// Control plane.
		ControlPlaneAddress: opts.ControlPlaneAddress,
		ActorsService:       opts.ActorsService,
		RemindersService:    opts.RemindersService,
		SchedulerAddress:    opts.SchedulerAddress,
		SchedulerStreams:    opts.SchedulerJobStreams,

		// Dapr's own listeners.
		DaprHTTPPort:                  opts.DaprHTTPPort,
		DaprAPIGRPCPort:               opts.DaprAPIGRPCPort,
		DaprAPIListenAddresses:        opts.DaprAPIListenAddresses,
		DaprInternalGRPCPort:          opts.DaprInternalGRPCPort,
		DaprInternalGRPCListenAddress: opts.DaprInternalGRPCListenAddress,
		DaprPublicPort:                opts.DaprPublicPort,
		DaprPublicListenAddress:       opts.DaprPublicListenAddress,
		UnixDomainSocket:              opts.UnixDomainSocket,
		AllowedOrigins:                opts.AllowedOrigins,
		MaxRequestSize:                opts.MaxRequestSize,
		ReadBufferSize:                opts.ReadBufferSize,
		ProfilePort:                   opts.ProfilePort,
		EnableProfiling:               opts.EnableProfiling,
		Metrics: metrics.Options{
			Enabled:       opts.Metrics.Enabled(),
			Log:           log,
			Port:          opts.Metrics.Port(),
			Namespace:     metrics.DefaultMetricNamespace,
			Healthz:       hz,
			ListenAddress: opts.Metrics.ListenAddress(),
		},

		// The application behind the sidecar.
		ApplicationPort:        opts.AppPort,
		AppProtocol:            opts.AppProtocol,
		AppChannelAddress:      opts.AppChannelAddress,
		AppSSL:                 opts.AppSSL,
		AppMaxConcurrency:      opts.AppMaxConcurrency,
		EnableAppHealthCheck:   opts.EnableAppHealthCheck,
		AppHealthCheckPath:     opts.AppHealthCheckPath,
		AppHealthProbeInterval: opts.AppHealthProbeInterval,
		AppHealthProbeTimeout:  opts.AppHealthProbeTimeout,
		AppHealthThreshold:     opts.AppHealthThreshold,

		// Shutdown and Kubernetes behaviour.
		DaprGracefulShutdownSeconds:  opts.DaprGracefulShutdownSeconds,
		DaprBlockShutdownDuration:    opts.DaprBlockShutdownDuration,
		DisableBuiltinK8sSecretStore: opts.DisableBuiltinK8sSecretStore,
	}
}
