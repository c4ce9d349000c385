// Hardhat 2 network for the nonce manager's tests (`npx hardhat node --port N` from this
// directory). Chain id 31337 like anvil; automine on, so each transaction mines on arrival.
module.exports = {
  networks: {
    hardhat: { chainId: 31337, mining: { auto: true } },
  },
};
