// Command orion-submit submits an orion to an Orion server and streams its
// events until it ends: the Go example of the clients generated from proto/.
//
//	orion-submit [-server H:P] [-strategy capability_match] [-timeout 5m]
//	             [-ca ca.pem] [-cert ci.pem -key ci.key] [-token T] FILE.json
//
// FILE is an orion file in the proto JSON mapping: a SubmitOrionRequest
// ({"orion": {...}, "assignmentStrategy": ...}) or just its TaskOrion (as in
// examples/*.json). It prints one line per event, then the orion's final state
// and each star's result, and exits 0 only if the orion COMPLETED (1 if it
// failed or was cancelled, 2 on any other error).
//
// Like the orion commands: -ca (or -tls) dials with TLS, -cert/-key add a
// client certificate (mutual TLS), and -token (default $ORION_TOKEN) is sent
// as "authorization: Bearer <token>" metadata on every call; with none of
// them, plaintext and no token (a server on loopback without authentication).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"

	orionv1 "orion/gen/orion/v1"
)

const (
	exitCompleted = 0
	exitFailed    = 1
	exitError     = 2
)

func main() {
	os.Exit(run())
}

func run() int {
	defaultServer := os.Getenv("ORION_SERVER")
	if defaultServer == "" {
		defaultServer = "127.0.0.1:50051"
	}
	server := flag.String("server", defaultServer, "Orion server host:port (default $ORION_SERVER)")
	strategy := flag.String("strategy", "", "assignment strategy for stars without a device: "+
		"round_robin, capability_match or load_balance (default: the file's)")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	var security security
	flag.StringVar(&security.ca, "ca", os.Getenv("ORION_CA"),
		"PEM file of the CA that signed the server's certificate: dial with TLS (default $ORION_CA)")
	flag.StringVar(&security.cert, "cert", os.Getenv("ORION_CERT"),
		"client certificate (PEM) for mutual TLS, with -key (default $ORION_CERT)")
	flag.StringVar(&security.key, "key", os.Getenv("ORION_KEY"), "its key (default $ORION_KEY)")
	flag.BoolVar(&security.tls, "tls", os.Getenv("ORION_TLS") == "1" || os.Getenv("ORION_TLS") == "true",
		"dial with TLS trusting the system's CAs (default $ORION_TLS)")
	flag.StringVar(&security.serverName, "server-name", os.Getenv("ORION_SERVER_NAME"),
		"the name the server's certificate must carry, if not the host dialled (default $ORION_SERVER_NAME)")
	token := flag.String("token", os.Getenv("ORION_TOKEN"), "client token, sent as a bearer token (default $ORION_TOKEN)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] FILE.json\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		return exitError
	}

	request, err := readRequest(flag.Arg(0))
	if err == nil && *strategy != "" {
		err = setStrategy(request, *strategy)
	}
	var transport grpc.DialOption
	if err == nil {
		transport, err = security.dialOption()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return exitError
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if *token != "" { // every call made with ctx carries it
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+*token)
	}
	conn, err := grpc.DialContext(ctx, *server, transport)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error: connecting to", *server+":", err)
		return exitError
	}
	defer conn.Close()

	final, err := submitAndWatch(ctx, conn, request, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err) // e.g. "SubmitOrion: rpc error: code = InvalidArgument desc = ..."
		return exitError
	}
	if final.GetOrion().GetState() == orionv1.OrionState_ORION_STATE_COMPLETED {
		return exitCompleted
	}
	return exitFailed
}

// security is how the channel is dialled: TLS, a client certificate.
type security struct {
	ca, cert, key, serverName string
	tls                       bool
}

// dialOption is plaintext with no setting, TLS with -ca, -tls or -cert; an
// error names the flag whose file cannot be used.
func (s security) dialOption() (grpc.DialOption, error) {
	if s.ca == "" && s.cert == "" && s.key == "" && !s.tls {
		return grpc.WithInsecure(), nil
	}
	config := &tls.Config{ServerName: s.serverName, MinVersion: tls.VersionTLS12}
	if s.ca != "" {
		pem, err := os.ReadFile(s.ca)
		if err != nil {
			return nil, fmt.Errorf("-ca: %w", err)
		}
		config.RootCAs = x509.NewCertPool()
		if !config.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-ca %s: no PEM certificate in it", s.ca)
		}
	}
	if (s.cert == "") != (s.key == "") {
		return nil, errors.New("a client certificate needs its key: give both -cert and -key")
	}
	if s.cert != "" {
		pair, err := tls.LoadX509KeyPair(s.cert, s.key)
		if err != nil {
			return nil, fmt.Errorf("-cert/-key: %w", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(config)), nil
}

// readRequest reads FILE as a SubmitOrionRequest, or as a bare TaskOrion.
func readRequest(path string) (*orionv1.SubmitOrionRequest, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	request := &orionv1.SubmitOrionRequest{}
	requestErr := protojson.Unmarshal(data, request)
	if requestErr == nil && request.GetOrion() != nil {
		return request, nil
	}
	orion := &orionv1.TaskOrion{}
	if err := protojson.Unmarshal(data, orion); err != nil {
		if requestErr == nil {
			requestErr = err
		}
		return nil, fmt.Errorf("%s is neither a SubmitOrionRequest nor a TaskOrion in the proto "+
			"JSON mapping: %v", path, requestErr)
	}
	return &orionv1.SubmitOrionRequest{Orion: orion}, nil
}

func setStrategy(request *orionv1.SubmitOrionRequest, name string) error {
	value, ok := orionv1.AssignmentStrategy_value["ASSIGNMENT_STRATEGY_"+strings.ToUpper(name)]
	if !ok || value == 0 {
		return fmt.Errorf("unknown strategy %q: use round_robin, capability_match or load_balance", name)
	}
	request.AssignmentStrategy = orionv1.AssignmentStrategy(value)
	return nil
}

// submitAndWatch submits the orion, then follows its events from the start
// (include_history replays those published before the watch began, so none is
// missed) and returns the event that ended it.
func submitAndWatch(ctx context.Context, conn *grpc.ClientConn, request *orionv1.SubmitOrionRequest,
	out io.Writer) (*orionv1.Event, error) {
	submitted, err := orionv1.NewOrchestratorServiceClient(conn).SubmitOrion(ctx, request)
	if err != nil {
		return nil, fmt.Errorf("SubmitOrion: %w", err)
	}
	orionID := submitted.GetOrionId()
	fmt.Fprintf(out, "submitted %s: %d stars\n", orionID, len(submitted.GetOrion().GetTasks()))

	stream, err := orionv1.NewEventServiceClient(conn).WatchEvents(ctx, &orionv1.WatchEventsRequest{
		OrionId: orionID, IncludeHistory: true,
	})
	if err != nil {
		return nil, fmt.Errorf("WatchEvents: %w", err)
	}
	for {
		response, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("the event stream of %s ended before the orion did", orionID)
		}
		if err != nil {
			return nil, fmt.Errorf("WatchEvents: %w", err)
		}
		event := response.GetEvent()
		switch event.GetType() {
		case orionv1.EventType_EVENT_TYPE_BOOKMARK:
			continue
		case orionv1.EventType_EVENT_TYPE_ORION_COMPLETED, orionv1.EventType_EVENT_TYPE_ORION_FAILED,
			orionv1.EventType_EVENT_TYPE_ORION_CANCELLED:
			printEvent(out, event)
			printResult(out, event.GetOrion().GetResult())
			return event, nil
		default:
			printEvent(out, event)
		}
	}
}

// printEvent writes one line: sequence, type, star and device, and details.
func printEvent(out io.Writer, event *orionv1.Event) {
	kind := strings.TrimPrefix(event.GetType().String(), "EVENT_TYPE_")
	line := fmt.Sprintf("event %d %s", event.GetSequence(), kind)
	if event.GetTaskId() != "" {
		line += " task=" + event.GetTaskId()
	}
	if event.GetDeviceId() != "" {
		line += " device=" + event.GetDeviceId()
	}
	if task := event.GetTask(); task != nil {
		if task.GetAttempt() > 0 {
			line += fmt.Sprintf(" attempt=%d", task.GetAttempt())
		}
		if task.GetError() != "" {
			line += fmt.Sprintf(" error=%q", task.GetError())
		}
	}
	if orion := event.GetOrion(); orion != nil && orion.GetState() != orionv1.OrionState_ORION_STATE_UNSPECIFIED {
		line += " state=" + strings.TrimPrefix(orion.GetState().String(), "ORION_STATE_")
	}
	fmt.Fprintln(out, line)
}

// printResult writes the final state and each star's result as JSON.
func printResult(out io.Writer, result *orionv1.OrionResult) {
	fmt.Fprintf(out, "orion %s %s: %d stars\n", result.GetOrionId(),
		strings.TrimPrefix(result.GetStatus().String(), "ORION_STATE_"), result.GetTotalTasks())
	taskIDs := make([]string, 0, len(result.GetResults()))
	for taskID := range result.GetResults() {
		taskIDs = append(taskIDs, taskID)
	}
	sort.Strings(taskIDs)
	for _, taskID := range taskIDs {
		value, err := protojson.Marshal(result.GetResults()[taskID])
		if err != nil {
			value = []byte(fmt.Sprintf("<%v>", err))
		}
		fmt.Fprintf(out, "result %s %s\n", taskID, compact(value))
	}
	errorIDs := make([]string, 0, len(result.GetErrors()))
	for taskID := range result.GetErrors() {
		errorIDs = append(errorIDs, taskID)
	}
	sort.Strings(errorIDs)
	for _, taskID := range errorIDs {
		fmt.Fprintf(out, "error %s %s\n", taskID, result.GetErrors()[taskID])
	}
}

// compact removes the random spaces protojson puts in its output (it does so on
// purpose so nobody relies on its exact format).
func compact(value []byte) string {
	return strings.Join(strings.Fields(string(value)), " ")
}
