package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ipfs/kubo/client/rpc"

	"github.com/ipnix/ipnix/fetch"
	"github.com/ipnix/ipnix/mirror"
)

// connectKubo opens the kubo RPC API at addr (the --api flag) for a
// command that writes to the node (publish, mirror), and checks that it
// answers: a bad address is a usage error, a node that does not answer
// within 5 s exits with exitKubo.
func connectKubo(ctx context.Context, addr string) (*rpc.HttpApi, string, error) {
	api, url, err := fetch.NewKuboClient(addr)
	if err != nil {
		return nil, "", usageError{fmt.Errorf("--api: %w", err)}
	}
	kubo, _ := fetch.NewKubo(addr, 0)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = kubo.Ping(pctx)
	cancel()
	if err != nil {
		return nil, "", codedError{exitKubo, fmt.Errorf("kubo RPC API at %s does not answer (is the daemon running? see --api): %w", url, err)}
	}
	return api, url, nil
}

// noteProvideStrategy logs, at level, when the node announces every block
// it stores (kubo's default): at binary-cache scale one provider record
// per NAR root is what clients need (Provide.Strategy roots; README).
func noteProvideStrategy(ctx context.Context, api *rpc.HttpApi, url string, log *slog.Logger, level slog.Level) {
	every, err := (&mirror.Kubo{API: api}).AnnouncesEveryBlock(ctx)
	if err != nil {
		log.Debug("could not read the node's provide configuration", "err", err)
		return
	}
	if every {
		log.Log(ctx, level, "the kubo node announces every block it stores (Provide.Strategy all, kubo's default): one provider record per 256 KiB instead of one per NAR; at binary-cache scale set Provide.Strategy roots (see the README)", "api", url)
	}
}
