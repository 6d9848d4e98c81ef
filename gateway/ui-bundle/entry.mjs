// What the browser UI (gateway/src/ui/app.js) takes from Momento's web SDK:
// bundled by scripts/build-ui-bundle into gateway/src/ui/momento-sdk.js.
export {
  CredentialProvider,
  TopicClient,
  TopicConfigurations,
  TopicSubscribe,
} from "@gomomento/sdk-web";
